"""Runs: every stored run in one table; overlay curves, export, delete, prune, reopen in the Lab.

A student deletes and prunes only their own runs (the engine refuses the others'); the instructor
may delete or prune any."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from kdengine import NotAllowed, RunSnapshot, export_run, temperature_of
from ui import charts, widgets
from ui.classroom import caller
from ui.engine import find_run, get_engine, owner_id, stored_runs
from ui.words import metric_name

ss = st.session_state
owner = owner_id()
who = caller()
engine = get_engine()
store = engine.store

st.title("Runs")
st.caption("Every run this machine has stored (the Lab, sweeps and the command line write here).")


def weights_text(params: dict) -> str:
    """The method's weights in words: 'soft 0.9 · hard 0.1', 'alpha 1 · beta 8 · ce 1', ..."""
    keys = [k for k in params if "weight" in k or k in ("alpha", "beta")]
    return " · ".join(f"{k.replace('_weight', '')} {params[k]:g}" if isinstance(params[k], float)
                      else f"{k.replace('_weight', '')} {params[k]}" for k in keys)


def teacher_text(cfg: dict) -> str:
    t = cfg.get("teacher", {})
    if t.get("source") == "none":
        return "none"
    if t.get("source") in ("shipped", "checkpoint", "run"):
        return f"{t['source']}: {t.get('checkpoint', '')}"
    m = t.get("model", {})
    return f"{m.get('arch')} {m.get('depth')}x{m.get('width')} ({t.get('epochs')} ep)"


TEST_ACC, TEACHER_ACC = metric_name("final_test_acc"), metric_name("teacher_test_acc")


def row(r: RunSnapshot) -> dict:
    cfg, sm = r.config, r.summary
    p = cfg.get("method", {}).get("params", {})
    s = cfg.get("student", {})
    # What a student scans for first (name, method, status, result) leads; the id goes last.
    return {"name": r.name or r.run_id[-6:], "method": cfg.get("method", {}).get("name"),
            "status": r.status,
            TEST_ACC: sm.get("final_test_acc"),
            "data": cfg.get("data", {}).get("name"), "T": temperature_of(cfg), "weights": weights_text(p),
            "teacher": teacher_text(cfg), "student": f"{s.get('arch')} {s.get('depth')}x{s.get('width')}",
            "epochs": cfg.get("train", {}).get("epochs"),
            TEACHER_ACC: sm.get("teacher_test_acc"),
            "created": pd.to_datetime(r.created, unit="s"), "id": r.run_id}


everyone = st.toggle("Everyone's runs", key="runs_everyone",
                     help="Off: only the runs of this browser session (your name).")
runs = stored_runs(limit=500, owner_only=not everyone)
shared = st.query_params.get("run")            # a run opened from a link is shown, whoever's
if shared and shared not in {r.run_id for r in runs}:
    run_shared = find_run(shared)
    runs += [run_shared] if run_shared else []
if not runs:
    if shared:
        st.warning(f"No stored run {shared!r} (deleted, or stored on another machine).")
    st.info("No runs stored yet: train one in the Lab." if everyone else
            "None of your runs are stored yet: train one in the Lab, or turn on Everyone's runs.",
            icon=":material/info:")
    st.stop()
table = pd.DataFrame([row(r) for r in runs])
st.dataframe(table, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
             column_config={TEST_ACC: st.column_config.NumberColumn(
                                format="percent", help="The student's accuracy on the test set "
                                                       "after its last epoch."),
                            TEACHER_ACC: st.column_config.NumberColumn(format="percent"),
                            "name": st.column_config.TextColumn(
                                help="The run's label (the end of its id when it has none)."),
                            "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})

by_id = {r.run_id: r for r in runs}
# A link to one run (e.g. a click on a Sweeps heatmap cell: ?run=<id>) selects it, once per link.
linked = st.query_params.get("run")
if linked and ss.get("runs_linked") != linked:
    ss["runs_linked"] = linked
    if linked in by_id:
        ss["runs_sel"] = [linked]
    else:
        st.warning(f"No stored run {linked!r} (deleted, or stored on another machine).")
if "runs_sel" not in ss:
    ss["runs_sel"] = [r.run_id for r in runs if not r.active][:3]   # newest finished
ss["runs_sel"] = [i for i in ss["runs_sel"] if i in by_id]
sel = st.multiselect("Selected runs", list(by_id), key="runs_sel",
                     format_func=lambda i: widgets.run_label(by_id[i]),
                     help="Compare, export, delete or reopen these.")

# -- overlay -------------------------------------------------------------------------------------
if sel:
    snaps = {i: engine.snapshot(i) for i in sel}
    names = sorted({k for s in snaps.values() for k in s.series
                    if k not in ("progress", "eta_s", "elapsed_s", "samples_per_s", "lr")})
    default = "test_acc" if "test_acc" in names else (names or [""])[0]
    if ss.get("runs_metric") not in names:
        ss["runs_metric"] = default
    metric = st.selectbox("Metric", names, key="runs_metric", format_func=metric_name)
    if metric:
        curves = [(f"{i[-6:]} {snaps[i].config['method']['name']}",
                   *charts.xy(snaps[i].series, metric)) for i in sel]
        with st.container(key="runs_overlay"):
            charts.show(charts.overlay_figure(curves, metric))
    else:        # e.g. runs that failed before their first point
        st.caption("The selected runs have no points to draw.")

    # -- actions ---------------------------------------------------------------------------------
    c1, c2, c3, c4 = st.columns(4)
    csv_text = "".join(export_run(store, i, "csv").split("\n", 1)[1] if k else export_run(store, i, "csv")
                       for k, i in enumerate(sel))
    c1.download_button("Export CSV", csv_text, file_name="kd_runs.csv", mime="text/csv",
                       icon=":material/download:", key="runs_csv")
    json_text = json.dumps([json.loads(export_run(store, i, "json")) for i in sel], indent=1)
    c2.download_button("Export JSON", json_text, file_name="kd_runs.json",
                       mime="application/json", icon=":material/download:", key="runs_json")
    if c3.button(f"Open {sel[0][-6:]} in Lab", key="runs_open", icon=":material/science:",
                 help="Load this run's configuration into the Lab (first selected run)."):
        ss["lab_load"] = by_id[sel[0]].config
        ss["lab_load_run"] = sel[0]            # the Lab shows this run under its setup
        st.switch_page("app_pages/lab.py")
    mine = [i for i in sel if who.may_change(by_id[i].owner)]     # what this session may delete
    if mine and c4.button(f"Delete {len(mine)} run(s)", key="runs_delete", icon=":material/delete:"):
        ss["runs_confirm_delete"] = True
    if len(mine) < len(sel):
        st.caption(f"{len(sel) - len(mine)} of the selected runs belong to other students: only "
                   f"they or the instructor can delete them.")

    def delete_selected() -> None:
        kept = []
        for i in mine:
            try:
                engine.delete_run(i, caller=who)
            except (NotAllowed, ValueError) as e:    # another's run, or one still training
                kept.append(str(e))
        ss["runs_deleted"] = (len(mine) - len(kept), kept)

    widgets.confirm("runs_confirm_delete", f"Delete {len(mine)} run(s) with their metrics and "
                    f"checkpoints? This cannot be undone.", delete_selected, "Yes, delete")

if "runs_deleted" in ss:
    n, kept = ss.pop("runs_deleted")
    st.success(f"Deleted {n} run(s).")
    for why in kept:
        st.warning(why, icon=":material/info:")

with st.expander("Prune old runs" if who.instructor else "Prune my old runs"):
    whose = "finished runs (everyone's)" if who.instructor else "of your finished runs"
    keep = st.number_input(f"Keep the newest {whose}", 0, 100_000, 100, key="runs_keep")
    if st.button("Prune", key="runs_prune"):
        ss["runs_confirm_prune"] = True

    def prune() -> None:
        ss["runs_pruned"] = engine.prune(keep=int(keep), caller=who)

    widgets.confirm("runs_confirm_prune",
                    f"Delete every finished run except the newest {keep}"
                    + (", whoever started it?" if who.instructor else " of yours?"),
                    prune, "Yes, prune")
    if "runs_pruned" in ss:
        st.success(f"Deleted {ss.pop('runs_pruned')} old run(s).")
