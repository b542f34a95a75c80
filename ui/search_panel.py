"""The Sweeps page's search mode: pick knobs and ranges, budgets, pruner and metric; watch trials
arrive; open the best config in the Lab. Logic lives in :mod:`kdengine.experiments.search`.

``setup`` and ``view`` are separate so the page's polling (a fragment) can wrap ``view`` alone."""
from __future__ import annotations

import re
from typing import Container
from urllib.parse import urlencode

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from kdengine import (DEFAULT_SEARCH_SPACE, PRUNERS, SEARCH_BACKENDS, SEARCH_METRICS, ConfigError,
                      RunConfig, SearchSpec, best_config, best_trial, default_range, flatten, get_search,
                      is_running, knob_meta, resume_search, search_warnings, shown_status,
                      start_search, stored_trials, study_of)
from ui import widgets
from ui.classroom import caller, may_change, number_knob, with_locks
from ui.live import live_fragment
from ui.search_charts import history_figure, optuna_figures
from ui.state import config_to_query
from ui.words import error_text, knob_label, metric_name, plain

ss = st.session_state
VAL_NOTE = ("Trials are scored on **validation accuracy**: a share of the training set (20% unless "
            "the preset sets another) that neither the teacher nor the student trains on. The test "
            "set is never looked at while searching, so the test figure of the best config stays "
            "honest.")
# Words for the backends the engine offers (SEARCH_BACKENDS); one it adds later is offered by name.
BACKEND_HELP = {"local": "each trial is a run of its own, queued like any other",
                "vectorised": "batches of 8 suggestions trained together as stacked students "
                              "(method knobs only; a pruned trial leaves the pass)"}
PRUNER_HELP = ("median: stop a trial whose epoch-k accuracy is below the median of earlier trials at "
               "epoch k; asha: successive halving, only the best third goes on at epochs 1, 3, 9, ...; "
               "none: every trial trains to the end")


def searchable(base: RunConfig) -> list[str]:
    """Every knob a search can range over: numbers, booleans and fields with choices."""
    out = []
    for key, value in flatten(base.to_dict()).items():
        if key == "name" or not isinstance(value, (int, float, bool, str)):
            continue
        try:
            meta = knob_meta(base, key)
        except ConfigError:
            continue
        if meta["kind"] != "str" or meta["choices"]:
            out.append(key)
    return out


def _said(note: str) -> str:
    """A search's stored warning in the page's words: metric keys and config paths named."""
    return plain(re.sub(r"\b(?:val_acc|test_acc|kl_test)\b", lambda m: metric_name(m.group(0)), note))


def _range_inputs(base: RunConfig, key: str) -> dict:
    """Widgets for one knob's range, defaulting to the knob's metadata."""
    rng = default_range(base, key)
    short = knob_label(key)
    if "choices" in rng:
        picked = st.multiselect(f"{short}: choices", rng["choices"], rng["choices"], key=f"se_ch_{key}")
        return {"choices": picked}
    meta = knob_meta(base, key)
    is_int = meta["kind"] == "int"
    cast = int if is_int else float
    c1, c2, c3 = st.columns([2, 2, 1])
    fmt = "%d" if is_int else "%.5g"
    low = c1.number_input(f"{short}: low", value=cast(rng["low"]), format=fmt, key=f"se_lo_{key}")
    high = c2.number_input(f"{short}: high", value=cast(rng["high"]), format=fmt, key=f"se_hi_{key}")
    log = c3.checkbox("log", rng["log"], key=f"se_log_{key}", help="sample on a log scale")
    return {"low": cast(low), "high": cast(high), "log": log}


def setup(engine, owner: str, preset: str, base: RunConfig, refused: Container[str] = ()) -> None:
    """The search form; a started search's id goes to ``st.session_state['search_id']``. ``base``
    has the class lock applied; ``refused`` are the knobs they keep out of the space."""
    st.caption(VAL_NOTE)
    fields = [k for k in searchable(base) if k not in refused]
    default = [k for k in DEFAULT_SEARCH_SPACE if k in fields][:2]
    knobs = st.multiselect("Knobs to search", fields, default, key="se_knobs", format_func=knob_label)
    space = {}
    for key in knobs:
        try:
            space[key] = _range_inputs(base, key)
        except ConfigError as e:
            st.error(error_text(e), icon=":material/error:")
    c1, c2, c3, c4 = st.columns(4)
    epochs = number_knob(c1, "Student epochs (max per trial)", "train.epochs", 1, 200,
                         int(base.train.epochs), "se_epochs")
    trials = c2.number_input("Trial budget", 1, 500, 16, key="se_trials")
    minutes = c3.number_input("Time budget (minutes, 0 = none)", 0.0, 1440.0, 0.0, key="se_minutes")
    seed = c4.number_input("Seed (-1 = none, trials in parallel)", -1, 10_000, 0, key="se_seed",
                           help="a seed reproduces the study; trials then run one at a time")
    c1, c2, c3, c4 = st.columns(4)
    pruner = c1.radio("Pruner", PRUNERS, key="se_pruner", horizontal=True, help=PRUNER_HELP)
    metric = c2.selectbox("Metric", list(SEARCH_METRICS), key="se_metric", format_func=metric_name)
    pareto = c3.checkbox("Also minimise epoch time (Pareto front)", key="se_pareto",
                         help="two objectives: Optuna cannot prune them, so every trial runs to the end")
    backend = c4.radio("Backend", SEARCH_BACKENDS, key="se_backend", horizontal=True,
                       help="; ".join(f"{k}: {BACKEND_HELP[k]}" for k in SEARCH_BACKENDS
                                      if k in BACKEND_HELP))
    for note in search_warnings(SearchSpec(base=base.to_dict(), space={}, metric=metric),
                                engine.store):
        st.warning(_said(note), icon=":material/warning:")
    if st.button("Run search", type="primary", key="se_launch"):
        cfg = base.copy()
        cfg.train.epochs = int(epochs)
        cfg = with_locks(cfg)
        spec = SearchSpec(base=cfg.to_dict(), space=space, n_trials=int(trials),
                          timeout_s=minutes * 60 or None, pruner=pruner, metric=metric,
                          second="epoch_s" if pareto else "", seed=None if seed < 0 else int(seed),
                          backend=backend, name=preset)
        widgets.launch_experiment("search_id",
                                  lambda: start_search(engine, spec, owner=owner))
    widgets.stored_sweep_picker(engine.store, "search", "search_id", "Search", limit=50)


def view(engine, owner: str, search_id: str) -> None:
    """Progress, trials (pruned ones marked), Optuna's plots and the best config so far."""
    se = get_search(search_id)
    row = engine.store.get_sweep(search_id)
    spec = se.spec if se else SearchSpec.from_dict(row["spec"])
    rows = se.rows() if se else stored_trials(engine.store, search_id)
    status = shown_status(row["status"], se)
    finished = [r for r in rows if r["state"] not in ("running", "stopped")]
    pruned = sum(r["state"] == "pruned" for r in rows)
    epochs = sum(r["epochs"] for r in rows)
    st.progress(min(1.0, len(finished) / max(1, spec.n_trials)),
                text=f"{status} · {len(finished)}/{spec.n_trials} trials · {pruned} pruned · "
                     f"{epochs} epochs trained · backend {spec.backend}")
    for note in (se.notices if se else row["state"].get("notices", [])):
        st.warning(_said(note), icon=":material/warning:")
    err = se.error if se else row["state"].get("error")
    if err:
        st.error(plain(err), icon=":material/error:")
    _best(spec, rows, owner)
    st.plotly_chart(history_figure(rows, spec.metric, spec.directions[0] == "maximize"),
                    key=f"se_hist_{search_id}", config={"displayModeBar": False})
    figs = _optuna_figures(search_id, spec, rows)
    cols = st.columns(max(1, len(figs)))
    for col, (name, fig) in zip(cols, figs.items()):
        fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
        col.plotly_chart(fig, key=f"se_{name}_{search_id}", config={"displayModeBar": False})
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in rows])
    table = table.rename(columns=lambda c: knob_label(c) if "." in c else
                         (metric_name(spec.metric) if c == "value" else c.replace("_", " ")))
    st.dataframe(table, hide_index=True, key=f"se_table_{search_id}")
    active = se is not None and not se.done
    if not may_change(row["owner"]):      # another student's search: read only
        return
    b1, b2 = st.columns(2)
    if active and b1.button("Stop search", key=f"se_stop_{search_id}"):
        se.stop(caller=caller())
    if not active and status != "done" and b2.button("Resume search", key=f"se_resume_{search_id}"):
        resume_search(engine, search_id, caller=caller())
        st.rerun()


def _optuna_figures(search_id: str, spec: SearchSpec, rows: list[dict]) -> dict:
    """Optuna's figures, rebuilt only when a trial finished (the view redraws every second)."""
    key = (search_id, tuple((r["trial"], r["state"]) for r in rows if r["state"] != "running"))
    cached = ss.get("se_figs")
    if cached is None or cached[0] != key:
        cached = (key, optuna_figures(study_of(spec, rows), list(spec.space), bool(spec.second)))
        ss["se_figs"] = cached
    return cached[1]


def _best(spec: SearchSpec, rows: list[dict], owner: str) -> None:
    best = best_trial(rows, spec)
    if best is None:
        return
    knobs = ", ".join(f"{knob_label(k)} = {best[k]:.4g}" if isinstance(best[k], float)
                      else f"{knob_label(k)} = {best[k]}" for k in spec.space)
    st.success(f"Best so far: trial #{best['trial']}, {metric_name(spec.metric)} {best['value']:.4f} "
               f"({knobs})",
               icon=":material/trophy:")
    query = config_to_query(best_config(spec, best))
    try:
        st.page_link("app_pages/lab.py", label="Open in Lab", icon=":material/science:",
                     query_params=query)
    except StreamlitAPIException:    # this page run alone (tests): the Lab is the app's root page
        st.markdown(f"[Open in Lab](./?{urlencode(query)})")


def panel(engine, owner: str, preset: str, base: RunConfig, refused: Container[str] = ()) -> None:
    """The whole search mode: the form, then the chosen search's live view."""
    setup(engine, owner, preset, base, refused)
    sid = ss.get("search_id")
    if sid:
        live_fragment(view, lambda: is_running(sid), engine, owner, sid, key=f"search.{sid}")
    else:
        st.info("No search yet: choose knobs and press Run search.", icon=":material/info:")
