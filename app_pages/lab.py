"""Lab: set up a distillation run, train it in the background and watch it live.

The setup lives in the URL (fields that differ from the defaults), so a copied link reopens it. A
run is submitted to the shared Engine under this session's owner id; a fragment polls
``engine.snapshot(run_id)`` about once a second while the run is active.
"""
from __future__ import annotations

import math
import time

import streamlit as st

from kdengine import (ACTIVE, ConfigError, DataConfig, ModelConfig, NotAllowed, RunConfig, RunSnapshot,
                      TOY_DATASETS, TeacherConfig, TrainConfig, apply_locks, free_knobs,
                      get_method_class, method_names)
from kdengine.core.config import SYNTHETIC_DATASETS
from ui import charts, state, widgets
from ui.classroom import (caller, lesson_locks, lock_refusals, locks_notice, locks_under, may_change,
                          session_params, show_refusals)
from ui.code_panel import code_panel, focused_term
from ui.engine import find_run, get_engine, owner_id, owner_runs, stored_runs
from ui.live import live_run
from ui.take_home import notebook_button
from ui.words import error_text, knob_label, metric_name, plain

ss = st.session_state
K = "lab."                 # prefix of every config widget key
CFG, MP, RUN = "lab_cfg", "lab_mparams", "lab_run"
SOURCES = {"train": "train now (then cached)", "shipped": "shipped with the app",
           "checkpoint": "checkpoint file", "run": "student of a stored run",
           "none": "none (student alone)"}
TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
CUSTOM = "(your setup)"     # the preset box's entry when the form is not a preset's
STARTING_S = 10.0           # a new run's live charts redraw fast for up to this long (see starting)

owner = owner_id()
locks = lesson_locks()      # read before this page rewrites the URL to its setup
st.title("Lab")
st.caption("Pick a data set, a teacher, a student and a distillation method, then press **Train**. "
           "Runs train in the background; this page follows them live.")
# The engine (and torch) after the title: on a fresh server torch takes seconds, and the page is
# drawn meanwhile. The kdengine names imported above are lazy and cheap.
with st.spinner("Loading the training engine (only after a server start)…"):
    engine = get_engine()


# -- loading a whole config (URL on first visit, a preset, "open in Lab" from Runs) ---------------
def set_config(cfg: RunConfig) -> None:
    ss[CFG] = cfg.to_dict()
    ss[MP] = {cfg.method.name: cfg.to_dict()["method"]["params"]}
    widgets.clear_keys(K)


def load_preset() -> None:
    try:
        set_config(state.load_preset(ss["lab_preset"]))
        ss["lab_url_problems"] = []
    except ConfigError as e:
        ss["lab_load_error"] = error_text(e)


def use_digits() -> None:
    """Offline fallback for a data set that could not be downloaded."""
    from kdengine import fallback_config
    d = ss[CFG]
    d["data"] = fallback_config(DataConfig(**d["data"])).__dict__
    widgets.clear_keys(K)


if CFG not in ss:
    params = st.query_params.to_dict()
    problems: list[str] = []
    base = None
    if params.get("preset"):
        try:
            base = state.load_preset(params["preset"])
        except ConfigError as e:
            problems.append(f"preset: {e.message}")
    cfg0, more = state.config_from_query(params, base)
    set_config(cfg0)
    ss["lab_url_problems"] = problems + more
    ss["lab_lock_refusals"] = lock_refusals(params, locks)     # e.g. a hand-edited ?method.params.T
    if base is not None and params["preset"] in state.presets():
        ss["lab_preset"] = params["preset"]
    else:
        ss["lab_preset"] = CUSTOM      # defaults or a shared setup: the box must not name a preset
if "lab_load" in ss:                         # set by the Runs page ("Open in Lab")
    try:
        set_config(RunConfig.from_dict(ss.pop("lab_load")))
        ss["lab_url_problems"] = []
        ss["lab_preset"] = CUSTOM                # the form is that run's, not a preset's
        ss["lab_opened_run"] = ss.pop("lab_load_run", None)
        ss[RUN] = ss["lab_opened_run"] or ss.get(RUN)
    except ConfigError as e:
        ss["lab_load_error"] = f"The stored setup could not be loaded: {error_text(e)}"


# -- setup sections ------------------------------------------------------------------------------
def data_section(dd: dict) -> dict:
    lk = locks_under("data.", locks)
    out = {"name": widgets.field(DataConfig, "name", dd, K + "data.", locked=lk)}
    show = ["test_fraction", "transfer"]
    if out["name"] in TOY_DATASETS:
        show = ["n_samples", "noise"] + (["n_classes"] if out["name"] in ("spirals", "blobs")
                                         else []) + show
    elif out["name"] == "hierarchy":
        show = ["n_samples", "noise", "hier_classes", "hier_superclasses"] + show
    if out["name"] in SYNTHETIC_DATASETS:
        st.caption("Synthetic CIFAR-shaped images drawn from a seed: **for timing only**, the "
                   "accuracies mean nothing.")
        show = ["n_samples"] + show
    out.update(widgets.render_fields(DataConfig, dd, K + "data.", show, locked=lk))
    if out["transfer"] == "labels":
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", ["n_labels"], locked=lk))
    if out["transfer"] == "heldout":
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", ["heldout_fraction"], locked=lk))
    with st.expander("more"):
        more = ["omit_class", "seed"] + (["data_dir", "download"] if out["name"] in TORCHVISION_SETS
                                         else [])
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", more, locked=lk))
    return {**dd, **out}


def teacher_section(td: dict, data_name: str) -> dict:
    lk = locks_under("teacher.", locks)
    out = {"source": widgets.field(TeacherConfig, "source", td, K + "teacher.", locked=lk,
                                   format_func=lambda s: SOURCES.get(s, s))}
    src = out["source"]
    if src in ("train", "checkpoint"):
        out["model"] = {**td["model"], **widgets.render_fields(
            ModelConfig, td["model"], K + "teacher.model.", ["arch", "depth", "width"],
            locked=locks_under("teacher.model.", locks))}
    if src == "train":
        out.update(widgets.render_fields(TeacherConfig, td, K + "teacher.", ["epochs", "lr"], locked=lk))
    elif src == "checkpoint":
        out.update(widgets.render_fields(TeacherConfig, td, K + "teacher.", ["checkpoint"], locked=lk))
        st.caption("A checkpoint file inside the data folder.")
    elif src == "shipped":
        from kdengine import shipped_teachers
        names = [n for n, m in shipped_teachers().items() if m.get("data") == data_name]
        if names:
            out["checkpoint"] = st.selectbox("shipped teacher", names, key=K + "teacher.shipped")
        else:
            st.info(f"No shipped teacher for {data_name}: choose *train now*.")
            out["checkpoint"] = ""
    elif src == "run":
        done = [r for r in stored_runs(limit=200) if r.status == "done"
                and r.config.get("data", {}).get("name") == data_name]
        out["checkpoint"] = widgets.run_picker(done, K + "teacher.run", "run whose student teaches",
                                               default=td.get("checkpoint")) or ""
    return {**td, **out}


def method_section(md: dict) -> dict:
    # A locked method knob fixes the method too: another method would start from its own values.
    why = free_knobs(["method.name"], locks)[1].get("method.name")
    spec = {"name": "method", "type": str, "choices": method_names(), "default": md["name"],
            "help": (f"Fixed by your instructor for this lesson: {why}." if why else
                     "Distillation method; its knobs below come from the method's Params.")}
    name = widgets.widget(spec, K + "method.name", md["name"], disabled=bool(why),
                          format_func=lambda n: f"{n} — {get_method_class(n).title or n}")
    cls = get_method_class(name)
    if cls.paper:
        st.caption(cls.paper)
    saved = ss[MP].get(name, {})
    params = widgets.render_fields(cls.Params, saved, f"{K}mp.{name}.",
                                   locked=locks_under("method.params.", locks))
    ss[MP][name] = params
    return {"name": name, "params": params}


def train_section(tr: dict) -> dict:
    lk = locks_under("train.", locks)
    out = widgets.render_fields(TrainConfig, tr, K + "train.", advanced=False, locked=lk)
    with st.expander("more"):
        out.update(widgets.render_fields(TrainConfig, tr, K + "train.", advanced=True, locked=lk))
    return {**tr, **out}


@st.cache_data(show_spinner=False)
def preset_hash(name: str) -> str | None:
    try:
        return state.load_preset(name).hash
    except ConfigError:
        return None


def build(d: dict) -> tuple[RunConfig | None, ConfigError | None]:
    try:
        return RunConfig.from_dict(d), None
    except ConfigError as e:
        return None, e


# -- page ----------------------------------------------------------------------------------------
state.show_url_notice(ss.get("lab_url_problems", []))
show_refusals(ss.get("lab_lock_refusals", []))
locks_notice()
if ss.get("lab_load_error"):
    st.error(ss.pop("lab_load_error"))

preset_names = list(state.presets())
if "lab_preset" not in ss and preset_names:
    ss["lab_preset"] = "digits-quick" if "digits-quick" in preset_names else preset_names[0]
pc1, pc2, _ = st.columns([3, 1, 3], vertical_alignment="bottom")
pc1.selectbox("Preset", preset_names + [CUSTOM], key="lab_preset",
              format_func=lambda n: n if n == CUSTOM else f"{n} — {state.presets().get(n, '')}",
              help="Ready-made setups that come with the app. Load one, then change anything.")
pc2.button("Load preset", key="lab_load_preset", on_click=load_preset, width="stretch",
           disabled=ss.get("lab_preset") == CUSTOM)

def shown_runs() -> list[RunSnapshot]:
    return owner_runs() or stored_runs(limit=20, owner_only=True)


# The setup folds away once a run is shown, so its live charts are in view; tabs give each section
# the full width (five columns truncated the labels). When Train was pressed (its key is set
# before the button is drawn) it folds in this same run: no second rerun before the charts.
d = ss[CFG]
with st.expander("Setup: data, teacher, student, method, training",
                 expanded=not shown_runs() and not ss.get("lab_opened_run")
                 and not ss.get("lab_train"), icon=":material/tune:"):
    t_data, t_teacher, t_student, t_method, t_train = st.tabs(
        ["Data", "Teacher", "Student", "Method", "Training"])
    with t_data:
        d["data"] = data_section(d["data"])
    with t_teacher:
        d["teacher"] = teacher_section(d["teacher"], d["data"]["name"])
    with t_student:
        d["student"] = {**d["student"],
                        **widgets.render_fields(ModelConfig, d["student"], K + "student.", columns=2,
                                                locked=locks_under("student.", locks))}
    with t_method:
        d["method"] = method_section(d["method"])
    with t_train:
        d["train"] = train_section(d["train"])

cfg, cfg_error = build(d)
if cfg is not None and ss.get("lab_preset") not in (None, CUSTOM) and \
        preset_hash(ss["lab_preset"]) != cfg.hash:
    st.caption(f"Changed from the preset **{ss['lab_preset']}**.")
if cfg_error is not None:
    st.error(error_text(cfg_error), icon=":material/error:")
else:
    want = {**session_params(), **state.config_to_query(cfg)}
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)
    from kdengine import lint
    for w in lint(cfg):
        st.warning(plain(w), icon=":material/lightbulb:")
    if cfg.teacher.source == "train" and get_method_class(cfg.method.name).needs_teacher:
        from kdengine import teacher_is_cached
        st.caption(":material/check_circle: This teacher is cached: it loads instantly."
                   if teacher_is_cached(cfg) else
                   f":material/hourglass_top: This teacher is not cached yet: it trains first "
                   f"({cfg.teacher.epochs} epochs), then is reused by every run with the same "
                   f"teacher settings.")

b1, b2, _ = st.columns([1, 3, 3], vertical_alignment="bottom")
run_name = b2.text_input("Run label (optional)", key="lab_run_name", max_chars=80)
if b1.button("Train", type="primary", key="lab_train", icon=":material/play_arrow:",
             width="stretch", disabled=cfg is None,
             help=f"Fix {knob_label(cfg_error.field) if cfg_error.field else 'the setup'} first."
             if cfg_error else None):
    if cfg is None:
        st.error(f"Cannot train: {error_text(cfg_error)}")
    else:
        # The locked widgets above already show the link's values: this is the safety net, for
        # any way a config reaches Train around them.
        cfg, forced = apply_locks(cfg, locks)
        try:
            ss[RUN] = engine.submit(cfg, owner=owner, name=run_name or cfg.name, caller=caller())
        except ConfigError as e:
            st.error(f"Cannot train: {error_text(e)}")
        else:
            if forced:              # shown with the run it concerns, in this and later runs
                ss["lab_lock_notice"] = (ss[RUN], "Your instructor has fixed " + ", ".join(
                    f"{knob_label(k)} = {locks[k]}" for k in forced) + "; this run uses those values.")
notice = ss.get("lab_lock_notice")
if notice and notice[0] == ss.get(RUN):
    st.info(notice[1], icon=":material/lock:")


# -- the run being watched -----------------------------------------------------------------------
def fmt_eta(eta) -> str:
    if not isinstance(eta, (int, float)) or not math.isfinite(eta):
        return "estimating…"
    return f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.1f} min"


def progress_bar(snap: RunSnapshot) -> None:
    status, phase = snap.status, snap.phase
    epochs = snap.config["train"]["epochs"]
    if status == "queued":
        ahead, wait = snap.queue_position or 0, snap.queue_eta_s
        st.progress(0.0, text=f"Queued: position {ahead + 1} ({ahead} queued ahead of it)"
                    + (f" · starts in about {fmt_eta(wait)}." if wait is not None else "."))
    elif status in ("running", "paused") and phase in ("teacher", "baseline"):
        st.progress(min(1.0, snap.phase_progress), text=snap.phase_message)
    elif status in ("running", "paused") and phase == "student":
        st.progress(min(1.0, snap.progress),
                    text=f"Student: epoch {snap.epoch:.1f} of {epochs} · ETA {fmt_eta(snap.eta_s)}"
                    + (" · paused" if status == "paused" else ""))
    elif status in ("running", "paused"):
        st.progress(0.0, text=snap.phase_message or phase)
    else:
        took = snap.summary.get("elapsed_s")
        st.progress(min(1.0, snap.progress) if status != "done" else 1.0,
                    text=f"{status}" + (f" in {took:.1f} s" if took else ""))


def controls(snap: RunSnapshot) -> None:
    rid, status = snap.run_id, snap.status
    if not may_change(snap.owner):      # another student's run, opened from Runs: watch only
        st.caption("Another student's run: only they or the instructor can pause or stop it.")
        return
    who = caller()
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 2, 3])
    try:
        if c1.button("Pause", key="lab_pause", icon=":material/pause:", disabled=status != "running"):
            engine.pause(rid, caller=who)
        if c2.button("Resume", key="lab_resume", icon=":material/resume:",
                     disabled=status != "paused"):
            engine.resume(rid, caller=who)
        if c3.button("Stop", key="lab_stop", icon=":material/stop:", disabled=status not in ACTIVE):
            engine.stop(rid, caller=who)
        notebook_button(engine.store, rid, snap.config, key="lab_notebook", where=c4)
        if status in ("stopped", "interrupted") and engine.store.checkpoint_path(rid).exists():
            if c5.button("Continue from last epoch", key="lab_continue", icon=":material/replay:",
                         help="Resume this run from its last checkpoint (same run id)."):
                engine.resume_run(rid, caller=who)
                st.rerun()
    except NotAllowed as e:
        st.error(str(e), icon=":material/block:")


def headline(snap: RunSnapshot) -> None:
    sm, latest = snap.summary, snap.latest
    cols = st.columns(4)
    acc = latest.get("test_acc")
    cols[0].metric(f"student: {metric_name('test_acc')}", f"{acc:.1%}" if acc is not None else "–",
                   help="Share of the test set the distilled student gets right (latest epoch).")
    t = latest.get("teacher_test_acc", sm.get("teacher_test_acc"))
    cols[1].metric(metric_name("teacher_test_acc"), f"{t:.1%}" if t is not None else "–")
    b = latest.get("baseline_test_acc", sm.get("baseline_test_acc"))
    cols[2].metric(metric_name("baseline_test_acc"), f"{b:.1%}" if b is not None and b == b else "–",
                   help="Same student trained on the labels only, after this run (switch on "
                        "'student alone, for comparison' under Training).")
    a = latest.get("agreement")
    cols[3].metric(metric_name("agreement"), f"{a:.1%}" if a is not None else "–",
                   help="Share of test samples where student and teacher pick the same class.")


def queue_view() -> None:
    active = owner_runs(active_only=True)
    if len(active) > 1 or (active and active[0].run_id != ss.get(RUN)):
        st.caption("Your queue: " + " · ".join(
            f"`{r.run_id}` {r.config['method']['name']} ({r.status})" for r in active))


def live_body(run_id: str, cfg_hash: str | None) -> None:
    snap = engine.snapshot(run_id)
    st.markdown(f"**Run** `{run_id}` · {snap.config['method']['name']} on "
                f"{snap.config['data']['name']} · status **{snap.status}**")
    controls(snap)
    progress_bar(snap)
    queue_view()
    if cfg_hash and snap.active and RunConfig.hash_of(snap.config) != cfg_hash:
        st.info("The settings above differ from this run's. Changes need a new run: press **Train** "
                "to queue one (this run keeps going), or **Stop** this run first.",
                icon=":material/restart_alt:")
    for note in dict.fromkeys(snap.notices):
        st.info(plain(note), icon=":material/info:")
    if snap.error and snap.status == "failed":
        st.error(f"The run failed: {plain(snap.error)}", icon=":material/error:")
        if snap.error.startswith("DataUnavailable"):
            if st.button("Use digits instead (works offline)", key="lab_use_digits"):
                use_digits()
                st.rerun()
        if snap.traceback:
            with st.expander("Details for the instructor: where the program failed"):
                st.code(snap.traceback)
    headline(snap)
    charts.live_panel(snap, key="lab", focus=focused_term("lab"))


def starting(run_id: str) -> bool:
    """Submitted under ``STARTING_S`` ago, no teacher in training, no point yet: the second a
    user watches most closely after pressing Train. (A run queued behind others, or one whose
    teacher trains first, goes back to the normal pace.)"""
    snap = engine.snapshot(run_id)
    return (snap.active and time.time() - snap.created < STARTING_S
            and snap.phase not in ("teacher", "baseline") and not charts.loss_terms(snap.series))


def loss_code(method: str, watched: str | None) -> None:
    """The chosen method's loss as a formula and as the code that trains it; its term names select
    the charts of the run shown when that run trains with this method."""
    shown = engine.snapshot(watched).config["method"]["name"] if watched else None
    with st.expander(f"The loss in code: {method}", icon=":material/code:"):
        code_panel(method, "lab", charted=shown == method,
                   note="Each term has a chart of its own once a run trains with this method."
                   if shown is None else f"The run shown trains with {shown}: train with {method} "
                                         f"to see the charts of these terms.")


runs = shown_runs()
opened = ss.get("lab_opened_run")
if opened and opened not in [r.run_id for r in runs]:
    other = find_run(opened)          # another session's run, opened from Runs
    if other is not None:
        runs.insert(0, other)
if runs:
    ids = [r.run_id for r in runs]
    if ss.get(RUN) not in ids:       # first visit or reload: reattach to the newest active run
        active = [r.run_id for r in runs if r.active]
        ss[RUN] = (active or ids)[0]
    st.divider()
    if len(runs) > 1:
        widgets.run_picker(runs, RUN, "Showing run", help="Your runs in this browser session.",
                           label_fn=lambda r: f"{r.run_id} · {r.config['method']['name']} · "
                                              f"{r.config['data']['name']}"
                                              + (f" · {r.name}" if r.name else ""))
    watched = ss[RUN]
    loss_code(d["method"]["name"], watched)
    live_run(live_body, watched, cfg.hash if cfg else None, key="lab",
             hurry=lambda: starting(watched), expected=engine.active_owners)
else:
    loss_code(d["method"]["name"], None)
    st.info("No runs yet. Load the **digits-quick** preset and press **Train**: it finishes in "
            "seconds on a laptop CPU, and its curves appear here.", icon=":material/rocket_launch:")
    # Empty, where the first run's curves will be. It also has the browser load its chart code
    # now, while the setup is read, not after Train (where it added to the wait for a first point).
    charts.show(charts.accuracy_figure({}))
