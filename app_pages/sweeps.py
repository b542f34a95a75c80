"""Sweeps: a grid over any two knobs (T x soft weight by default), drawn as a heatmap as cells finish.

Logic lives in kdengine.experiments.sweeps; this page picks the knobs, starts / stops / resumes a sweep and
polls its cells about once a second in a fragment. Clicking a cell opens that run on the Runs page.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdengine import (ConfigError, DEFAULT_SWEEP_AXES, DEFAULT_SWEEP_PRESET, SWEEP_BACKENDS,
                      SweepSpec, flatten, free_knobs, get_sweep,
                      is_running, parse_values, resume_sweep, shown_status, start_sweep, stored_cells)
from ui import search_panel, state, widgets
from ui.classroom import caller, lesson_locks, locks_notice, may_change, number_knob, with_locks
from ui.engine import get_engine, owner_id
from ui.live import live_fragment
from ui.nav import ROOT
from ui.sweep_charts import heatmap_figure, knob_lines_figure, sweep_reference
from ui.words import error_text, knob_label, metric_name, plain

ss = st.session_state
engine = get_engine()
owner = owner_id()
METRICS = ("final_test_acc", "final_train_acc", "final_agreement", "final_kl_test", "elapsed_s")
# Words for the backends the engine offers (SWEEP_BACKENDS); one it adds later is offered by name.
BACKEND_HELP = {"local": "each cell is a run of its own, queued like any other",
                "vectorised": "cells that differ only in the method's knobs train together in one "
                              "pass: the same batches, the teacher's outputs computed once"}

st.title("Sweeps")
st.caption("Pick two knobs and their values; every cell is a full distillation run. Cells already "
           "trained with the same config are reused, so a stopped sweep resumes where it was.")

# -- setup ---------------------------------------------------------------------------------------
presets = state.presets()
c1, c2, c3 = st.columns([2, 1, 1])
preset = c1.selectbox("Base config (preset)", list(presets), key="sw_preset",
                      index=list(presets).index(DEFAULT_SWEEP_PRESET) if DEFAULT_SWEEP_PRESET in presets
                      else 0,
                      format_func=lambda p: f"{p} — {presets[p]}" if presets[p] else p)
if preset == DEFAULT_SWEEP_PRESET:
    st.caption("The default grid: temperature T against the soft weight, with 50 labels on digits "
               "and SGD (with momentum). Under SGD the soft weight sets how hard the teacher pulls and a "
               "higher T shows more of its ranking of the wrong classes, and the grid shows both. "
               "Under Adam (most other presets) each step is divided by the gradient's running "
               "size, so the soft weight barely matters and the same grid comes out one colour.")
try:
    base = with_locks(state.load_preset(preset))        # the class lock holds in every cell
except ConfigError as e:
    st.error(f"Preset {preset}: {error_text(e)}")
    st.stop()
flat = flatten(base.to_dict())
fields, refused = free_knobs([k for k, v in flat.items()  # any scalar field can be a knob...
                              if k != "name" and isinstance(v, (int, float, bool, str))],
                             lesson_locks())               # ...that the class lock leaves free
why = "; ".join(f"{knob_label(k)} ({plain(reason)})" for k, reason in refused.items())
locks_notice(f"Not offered as sweep or search knobs: {why}." if refused else "")
mode = c2.radio("Mode", ("grid", "search"), key="sw_mode", horizontal=True,
                help="grid: every cell of the values you list; search: Optuna picks the next trial "
                     "from the ones so far and stops bad ones early")
if mode == "search":
    search_panel.panel(engine, owner, preset, base, refused)
    st.stop()
epochs = number_knob(c2, "Student epochs", "train.epochs", 1, 200, int(base.train.epochs), "sw_epochs")
backend = c3.radio("Backend", SWEEP_BACKENDS, key="sw_backend", horizontal=True,
                   help="; ".join(f"{k}: {BACKEND_HELP[k]}" for k in SWEEP_BACKENDS if k in BACKEND_HELP))


def default_axis(key: str) -> str:
    """The page's default axis or, when the class lock fixes it, the first other free method knob."""
    if key in fields:
        return key
    return next((f for f in fields if f.startswith("method.params.") and f not in DEFAULT_SWEEP_AXES),
                fields[0])


default_x, default_y = map(default_axis, DEFAULT_SWEEP_AXES)


def default_text(key: str) -> str:
    return ", ".join(map(str, DEFAULT_SWEEP_AXES.get(key, [flat.get(key)])))


k1, k2 = st.columns(2)
x_key = k1.selectbox("Knob 1 (x)", fields, index=fields.index(default_x),
                     key="sw_x", format_func=knob_label)
x_text = k1.text_input("Values (comma separated)", default_text(x_key), key=f"sw_xv_{x_key}")
y_key = k2.selectbox("Knob 2 (y)", fields, index=fields.index(default_y),
                     key="sw_y", format_func=knob_label)
y_text = k2.text_input("Values (comma separated)", default_text(y_key), key=f"sw_yv_{y_key}")
metric = st.selectbox("Metric", METRICS, key="sw_metric", format_func=metric_name)

if st.button("Run sweep", type="primary", key="sw_launch"):
    axes = {x_key: parse_values(x_text)}
    if y_key != x_key:
        axes[y_key] = parse_values(y_text)
    cfg = base.copy()
    cfg.train.epochs = int(epochs)
    cfg = with_locks(cfg)
    spec = SweepSpec(base=cfg.to_dict(), axes=axes, backend=backend, metric=metric,
                     name=f"{preset}")
    widgets.launch_experiment("sweep_id", lambda: start_sweep(engine, spec, owner=owner))

widgets.stored_sweep_picker(engine.store, "sweep", "sweep_id", "Sweep", limit=50)


# -- the live view -------------------------------------------------------------------------------
def view(sweep_id: str) -> None:
    sw = get_sweep(sweep_id)
    row = engine.store.get_sweep(sweep_id)
    spec = sw.spec if sw else SweepSpec.from_dict(row["spec"])
    rows = sw.rows() if sw else stored_cells(engine.store, sweep_id)
    status = shown_status(row["status"], sw)
    keys = list(spec.axes)
    xk, yk = keys[0], (keys[1] if len(keys) > 1 else None)
    done = sum(r["status"] == "done" for r in rows)
    st.progress(done / max(1, len(rows)), text=f"{status} · {done}/{len(rows)} cells · backend "
                                               f"{spec.backend}")
    for note in (sw.notices if sw else row["state"].get("notices", [])):
        st.warning(plain(note), icon=":material/info:")
    err = (sw.error if sw else row["state"].get("error"))
    if err:
        st.error(plain(err), icon=":material/error:")
    m = metric if any(metric in r for r in rows) or done == 0 else spec.metric
    if yk:
        fig = heatmap_figure(rows, xk, yk, m, spec.axes[xk], spec.axes[yk])
        event = st.plotly_chart(fig, key=f"heat_{sweep_id}", on_select="rerun",
                                selection_mode="points", config={"displayModeBar": False})
        pts = (event or {}).get("selection", {}).get("points", []) if event else []
        if pts:
            rid = (pts[0].get("customdata") or [""])[0]
            if rid:
                if (ROOT / "app_pages" / "runs.py").is_file():
                    st.page_link("app_pages/runs.py", label=f"Open run {rid}",
                                 icon=":material/open_in_new:",
                                 query_params={"run": rid, "sid": owner})
                else:
                    st.caption(f"Run {rid}")
        ref = sweep_reference(rows, m)
        st.caption(f"Colour: how many points of test accuracy each cell's student gains over the "
                   f"same student trained alone on the same labels ({ref:.1%}): blue above it, red "
                   f"below, white level with it. Click a cell to open its run." if ref is not None
                   else f"Colour: {metric_name(m)}, brighter is higher. Click a cell to open its run.")
    cols = st.columns(len(keys))
    for col, k in zip(cols, keys):
        other = next((o for o in keys if o != k), None)
        with col:
            st.plotly_chart(knob_lines_figure(rows, k, other, m, spec.axes[k],
                                              spec.axes[other] if other else []),
                            key=f"line_{sweep_id}_{k}", config={"displayModeBar": False})
    df = pd.DataFrame(rows)
    b1, b2, b3 = st.columns(3)
    b1.download_button("Download grid (CSV)", df.to_csv(index=False).encode(), f"{sweep_id}.csv",
                       "text/csv", key=f"csv_{sweep_id}")
    active = sw is not None and not sw.done
    mine = may_change(row["owner"])         # another student's sweep: read only
    if mine and active and b2.button("Stop sweep", key=f"stop_{sweep_id}"):
        sw.stop(caller=caller())
    if mine and not active and status != "done" and b3.button("Resume sweep",
                                                                key=f"resume_{sweep_id}"):
        resume_sweep(engine, sweep_id, caller=caller())
        st.rerun()
    with st.expander("Cells"):       # the CSV keeps the stored names; the table says them
        st.dataframe(df.rename(columns=lambda c: knob_label(c) if "." in c else metric_name(c)),
                     hide_index=True)


sid = ss.get("sweep_id")
if sid:
    live_fragment(view, lambda: is_running(sid), sid, key="sweeps")
else:
    st.info("No sweep yet: choose two knobs and press Run sweep.", icon=":material/info:")
