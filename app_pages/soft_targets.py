"""Soft targets: what the student is asked to match, one sample at a time.

Pick a run (finished, or live: its student is read from the checkpoint the trainer writes each
epoch) and a test sample, move the temperature: the teacher's and student's softmax at that T, the
entropy against T, the wrong classes ranked ("dark knowledge", Hinton et al. 2015) and DKD's split
of the KD term (Zhao et al. 2022) with its identity filled in. The numbers come from
``kdengine.analysis.soft_targets``; this file is layout.
"""
from __future__ import annotations

from urllib.parse import urlencode

import plotly.graph_objects as go
import streamlit as st

from kdengine.analysis import soft_targets as explore
from kdengine import (ACTIVE, CheckpointError, DataUnavailable, RunModels, RunSnapshot, TeacherNotCached,
                      checkpoint_state, load_run_models)
from ui import charts, state, widgets
from ui import soft_target_figs as stf
from ui.classroom import session_params
from ui.engine import get_engine, owner_id, owner_runs, stored_runs
from ui.live import live_run

ss = st.session_state
owner = owner_id()
engine = get_engine()
store = engine.store

st.title("Soft targets")
st.caption("Softening the teacher's output with a temperature T reveals how it ranks the wrong "
           "classes. That ranking is what a student learns from soft targets beyond the label.")


# -- which runs can be shown: any with a student checkpoint --------------------------------------
def candidate_runs(everyone: bool, shared: str | None) -> list[RunSnapshot]:
    """This session's runs (everyone's with the toggle), plus a run opened from a shared link."""
    runs = {r.run_id: r for r in stored_runs(limit=200)
            if everyone or r.owner == owner or r.run_id == shared}
    runs.update((r.run_id, r) for r in owner_runs())
    return [r for r in sorted(runs.values(), key=lambda r: -r.created)
            if checkpoint_state(store, r.run_id) is not None or r.active]


@st.cache_resource(max_entries=4, show_spinner="Loading the run's models…")
def run_models(run_id: str, mtime: float, train_teacher: bool) -> RunModels:
    """Cached per checkpoint version: a live run's new epoch has a new mtime."""
    return load_run_models(store, run_id, train_teacher=train_teacher)


@st.cache_data(max_entries=16, show_spinner=False)
def sample_views(run_id: str, mtime: float, i: int, _models: RunModels) -> list[dict]:
    """The sample at every slider T, once per (checkpoint version, sample)."""
    return explore.sample_views(_models, i, explore.slider_temperatures())


problems: list[str] = []
params = st.query_params.to_dict()
everyone = st.toggle("Everyone's runs", key="st_everyone",
                     help="Off: only your runs (and a run opened from a link).")
runs = candidate_runs(everyone, str(params.get("run") or ss.get("st_run") or ""))
ids = [r.run_id for r in runs]
if "st_run" not in ss:
    url_run = state.read_param(params, "run", None, str, lambda r: r in ids, problems,
                               "a run with a checkpoint")
    lab_run = ss.get("lab_run")
    ss["st_run"] = url_run or (lab_run if lab_run in ids else None) or (ids[0] if ids else None)
    ss["st_T_url"] = state.read_param(params, "T", None, float,
                                      lambda t: explore.T_MIN <= t <= explore.T_MAX, problems,
                                      f"a temperature in [{explore.T_MIN}, {explore.T_MAX}]")
    ss["st_i_url"] = state.read_param(params, "i", None, int, lambda i: i >= 0, problems,
                                      "a sample index")
    ss["st_problems"] = problems
state.show_url_notice(ss.get("st_problems", []))

run_id = widgets.run_picker(runs, "st_run", "Run", default=ss.get("st_run"),
                            help="Runs with a student checkpoint; a live run updates each epoch.")
if run_id is None:
    st.stop()

ck = checkpoint_state(store, run_id)


def newer_checkpoint() -> bool:
    """The trainer has written a checkpoint since this page run read one (or its first)."""
    now = checkpoint_state(store, run_id)
    return (now and now["mtime"]) != (ck and ck["mtime"])


def live_caption(run_id: str) -> None:
    status = engine.status(run_id)
    if status in ACTIVE:
        st.caption(f":material/sync: live run ({status}): the student is reloaded after each epoch.")


# While the run trains the caption redraws, and the whole page reruns once a newer checkpoint
# exists: the student is reloaded once per epoch, not at every redraw.
live_run(live_caption, run_id, key="soft_targets", every=2.0, stale=newer_checkpoint)
if ck is None:
    st.info("This run has no checkpoint yet: the student appears after its first epoch.",
            icon=":material/hourglass_top:")
    st.stop()

try:
    models = run_models(run_id, ck["mtime"], ss.get(f"st_train_teacher_{run_id}", False))
except TeacherNotCached as e:
    st.warning(str(e), icon=":material/school:")
    if st.button("Train the teacher again", key="st_train_teacher"):
        ss[f"st_train_teacher_{run_id}"] = True
        st.rerun()
    st.stop()
except (CheckpointError, DataUnavailable, KeyError) as e:
    st.error(f"Cannot show run {run_id}: {e}", icon=":material/error:")
    st.stop()

data = models.data
n_test = len(data.test)
st.caption(f"Student {models.student_label} after epoch {models.epoch} · teacher "
           f"{models.teacher_label or '(none)'} · {n_test} test samples of {models.cfg.data.name}")

# -- the sample ----------------------------------------------------------------------------------
if ss.get("st_loaded_run") != run_id:                    # a new run: start from its own T
    ss["st_loaded_run"] = run_id
    url_T, url_i = ss.pop("st_T_url", None), ss.pop("st_i_url", None)
    ss["st_T"] = explore.snap_T(url_T or explore.run_T(models.cfg) or 4.0)
    if url_i is not None and url_i >= n_test:
        ss["st_problems"] = ss.get("st_problems", []) + [f"sample {url_i} does not exist; showing sample 0"]
        url_i = None
    ss["st_i"] = url_i or 0
ss.setdefault("st_T", explore.snap_T(explore.run_T(models.cfg) or 4.0))
ss["st_i"] = min(int(ss.get("st_i", 0)), n_test - 1)


def pick(i: int) -> None:
    ss["st_i"] = i


left, right = st.columns([2, 3], gap="large")
with left:
    if data.kind == "image":
        which = st.selectbox("Show", explore.SAMPLE_FILTERS, key="st_filter",
                             help="Filter the grid to the interesting samples.")
        idx = explore.sample_indices(models, which, limit=18)
        if not idx:
            st.caption("No sample matches this filter.")
        cols = st.columns(6)
        for k, i in enumerate(idx):
            with cols[k % 6]:
                st.image(explore.upscale(explore.sample_image(data, i), 48), clamp=True,
                         width="stretch")
                st.button(f"{i}", key=f"st_pick_{i}", on_click=pick, args=(i,), width="stretch",
                          type="primary" if i == ss["st_i"] else "secondary")
    elif data.kind == "2d":
        xs = data.test.x.numpy()
        ys = data.test.y.numpy()
        fig = go.Figure(go.Scatter(x=xs[:, 0], y=xs[:, 1], mode="markers",
                                   marker={"color": ys, "colorscale": "Viridis", "size": 6},
                                   customdata=list(range(n_test)), name="test samples"))
        i0 = ss["st_i"]
        fig.add_trace(go.Scatter(x=[xs[i0, 0]], y=[xs[i0, 1]], mode="markers", name="chosen",
                                 marker={"size": 16, "symbol": "circle-open", "color": "red",
                                         "line": {"width": 3}}))
        charts.style(fig, "test samples (click one)", "x₁ (standardised)", "x₂ (standardised)",
                       height=340)
        ev = st.plotly_chart(fig, key="st_points", on_select="rerun", selection_mode="points",
                             config=charts.PLOT_CONFIG)
        pts = (ev or {}).get("selection", {}).get("points", []) if ev else []
        picked = pts[0].get("customdata") if pts else None
        if picked is not None and picked != ss.get("st_last_click"):   # a new click only
            ss["st_last_click"] = picked
            ss["st_i"] = int(picked[0] if isinstance(picked, list) else picked)
            st.rerun()
    st.number_input("sample index", 0, n_test - 1, key="st_i", step=1)
    if data.kind == "text":
        st.slider("temperature T", explore.T_MIN, explore.T_MAX, step=explore.T_STEP, key="st_T",
                  help="Sigmoid of logits / T per label; higher T softens it.")
    else:
        st.caption("Move the temperature T with the slider above the charts: it redraws in the "
                   "browser. T = 1 is the model's own output; higher T softens it.")

i, T = int(ss["st_i"]), float(ss["st_T"])
want = {**session_params(), "run": run_id, "i": str(i), "T": repr(T)}
if st.query_params.to_dict() != want:
    st.query_params.from_dict(want)
if data.kind == "text":                                 # multi-label: per-label sigmoids
    from ui.text_view import show_text_sample
    with right:
        show_text_sample(models, i, T)
    st.stop()
Ts = explore.slider_temperatures()
views = sample_views(run_id, ck["mtime"], i, models)
view = views[Ts.index(explore.snap_T(T))]
names = data.class_names

with right:
    target = view["target"]
    head = f"Sample **{i}** · true class **{names[target]}** · student predicts " \
           f"**{names[view['pred_student']]}**"
    if view["pred_teacher"] is not None:
        head += f" · teacher predicts **{names[view['pred_teacher']]}**"
    st.markdown(head)
    if data.kind == "image":
        st.image(explore.upscale(explore.sample_image(data, i), 128), clamp=True, width=160)

# Every T-dependent number lives in the figure, one frame per slider T: the slider redraws in the
# browser, and the server only reruns for a new sample or a new checkpoint.
with st.container(key="st_bars"):
    link = "?" + urlencode({"run": run_id, "i": i})      # no sid: a link for someone else
    charts.show(stf.prebuilt(stf.soft_target_figure(names, views, Ts.index(explore.snap_T(T)), link)),
                key="st_figure")
if view["dkd"] is None:
    st.info("This run has no teacher, so there is no KD term to split.", icon=":material/info:")
else:
    st.latex(r"\mathrm{KD} \;=\; \mathrm{TCKD} + (1 - p_t)\,\mathrm{NCKD}")
    st.caption("**TCKD**: KL between the binary [p_target, 1 − p_target] of teacher and student. "
               "**NCKD**: KL between the distributions over the wrong classes only, each "
               "renormalised. When the teacher is confident (p_t near 1), the weight 1 − p_t "
               "suppresses NCKD inside plain KD; DKD (Zhao et al. 2022) gives it its own weight β.")
