"""Lab: set up a distillation run, train it in the background and watch it live.

The setup lives in the URL (fields that differ from the defaults), so a copied link reopens it. A
run is submitted to the shared Engine under this session's owner id; a fragment polls
``engine.snapshot(run_id)`` about once a second while the run is active.
"""
from __future__ import annotations

import math

import streamlit as st

from kdengine import (ACTIVE, ConfigError, DataConfig, ModelConfig, RunConfig, TOY_DATASETS, TeacherConfig,
                      TrainConfig, get_method_class, method_names)
from ui import charts, state, widgets
from kdengine.teaching.lessons import apply_locks
from ui.classroom import session_params
from ui.engine import get_engine, owner_id, owner_runs, stored_runs
from ui.live import live_fragment

ss = st.session_state
K = "lab."                 # prefix of every config widget key
CFG, MP, RUN = "lab_cfg", "lab_mparams", "lab_run"
SOURCES = {"train": "train now (then cached)", "shipped": "shipped with the app",
           "checkpoint": "checkpoint file", "run": "student of a stored run",
           "none": "none (student alone)"}
TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10")

owner = owner_id()
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
        ss["lab_load_error"] = str(e)


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
if "lab_load" in ss:                         # set by the Runs page ("Open in Lab")
    try:
        set_config(RunConfig.from_dict(ss.pop("lab_load")))
        ss["lab_url_problems"] = []
    except ConfigError as e:
        ss["lab_load_error"] = f"the stored config could not be loaded: {e}"


# -- setup sections ------------------------------------------------------------------------------
def data_section(dd: dict) -> dict:
    out = {"name": widgets.field(DataConfig, "name", dd, K + "data.")}
    show = ["test_fraction", "transfer"]
    if out["name"] in TOY_DATASETS:
        show = ["n_samples", "noise"] + (["n_classes"] if out["name"] in ("spirals", "blobs")
                                         else []) + show
    out.update(widgets.render_fields(DataConfig, dd, K + "data.", show))
    if out["transfer"] == "labels":
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", ["n_labels"]))
    if out["transfer"] == "heldout":
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", ["heldout_fraction"]))
    with st.expander("more"):
        more = ["omit_class", "seed"] + (["data_dir", "download"] if out["name"] in TORCHVISION_SETS
                                         else [])
        out.update(widgets.render_fields(DataConfig, dd, K + "data.", more))
    return {**dd, **out}


def teacher_section(td: dict, data_name: str) -> dict:
    out = {"source": widgets.field(TeacherConfig, "source", td, K + "teacher.",
                                   format_func=lambda s: SOURCES.get(s, s))}
    src = out["source"]
    if src in ("train", "checkpoint"):
        out["model"] = {**td["model"], **widgets.render_fields(
            ModelConfig, td["model"], K + "teacher.model.", ["arch", "depth", "width"])}
    if src == "train":
        out.update(widgets.render_fields(TeacherConfig, td, K + "teacher.", ["epochs", "lr"]))
    elif src == "checkpoint":
        out.update(widgets.render_fields(TeacherConfig, td, K + "teacher.", ["checkpoint"]))
        st.caption("A path inside the data folder, loaded with `weights_only=True`.")
    elif src == "shipped":
        from kdengine import shipped_teachers
        names = [n for n, m in shipped_teachers().items() if m.get("data") == data_name]
        if names:
            out["checkpoint"] = st.selectbox("shipped teacher", names, key=K + "teacher.shipped")
        else:
            st.info(f"No shipped teacher for {data_name}: choose *train now*.")
            out["checkpoint"] = ""
    elif src == "run":
        done = [r for r in stored_runs(limit=200) if r["status"] == "done"
                and r["config"].get("data", {}).get("name") == data_name]
        out["checkpoint"] = widgets.run_picker(done, K + "teacher.run", "run whose student teaches",
                                               default=td.get("checkpoint")) or ""
    return {**td, **out}


def method_section(md: dict) -> dict:
    spec = {"name": "method", "type": str, "choices": method_names(), "default": md["name"],
            "help": "Distillation method; its knobs below come from the method's Params."}
    name = widgets.widget(spec, K + "method.name", md["name"],
                          format_func=lambda n: f"{n} — {get_method_class(n).title or n}")
    cls = get_method_class(name)
    if cls.paper:
        st.caption(cls.paper)
    saved = ss[MP].get(name, {})
    params = widgets.render_fields(cls.Params, saved, f"{K}mp.{name}.")
    ss[MP][name] = params
    return {"name": name, "params": params}


def train_section(tr: dict) -> dict:
    out = widgets.render_fields(TrainConfig, tr, K + "train.", advanced=False)
    with st.expander("more"):
        out.update(widgets.render_fields(TrainConfig, tr, K + "train.", advanced=True))
    return {**tr, **out}


def build(d: dict) -> tuple[RunConfig | None, ConfigError | None]:
    try:
        return RunConfig.from_dict(d), None
    except ConfigError as e:
        return None, e


# -- page ----------------------------------------------------------------------------------------
st.title("Lab")
st.caption("Pick a data set, a teacher, a student and a distillation method, then press **Train**. "
           "Runs train in the background; this page follows them live.")
state.show_url_notice(ss.get("lab_url_problems", []))
if ss.get("lab_load_error"):
    st.error(ss.pop("lab_load_error"))

preset_names = list(state.presets())
if "lab_preset" not in ss and preset_names:
    ss["lab_preset"] = "digits-quick" if "digits-quick" in preset_names else preset_names[0]
pc1, pc2, _ = st.columns([3, 1, 3], vertical_alignment="bottom")
pc1.selectbox("Preset", preset_names, key="lab_preset",
              format_func=lambda n: f"{n} — {state.presets().get(n, '')}",
              help="Shipped setups (assets/presets). Load one, then change anything.")
pc2.button("Load preset", key="lab_load_preset", on_click=load_preset, width="stretch")

d = ss[CFG]
c_data, c_teacher, c_student, c_method, c_train = st.columns(5, gap="medium")
with c_data:
    st.subheader("Data", divider="gray")
    d["data"] = data_section(d["data"])
with c_teacher:
    st.subheader("Teacher", divider="gray")
    d["teacher"] = teacher_section(d["teacher"], d["data"]["name"])
with c_student:
    st.subheader("Student", divider="gray")
    d["student"] = {**d["student"], **widgets.render_fields(ModelConfig, d["student"], K + "student.")}
with c_method:
    st.subheader("Method", divider="gray")
    d["method"] = method_section(d["method"])
with c_train:
    st.subheader("Training", divider="gray")
    d["train"] = train_section(d["train"])

cfg, cfg_error = build(d)
if cfg_error is not None:
    st.error(f"**{cfg_error.field or 'config'}**: {cfg_error.message}", icon=":material/error:")
else:
    want = {**session_params(), **state.config_to_query(cfg)}
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)
    from kdengine import lint
    for w in lint(cfg):
        st.warning(w, icon=":material/lightbulb:")
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
             width="stretch"):
    if cfg is None:
        st.error(f"Cannot train: **{cfg_error.field or 'config'}**: {cfg_error.message}")
    else:
        link = ss.get("lessons_link")        # an instructor's lesson link locks knobs here too
        cfg, forced = apply_locks(cfg, link.locked if link is not None else {})
        if forced:
            st.info("Your instructor's link fixes " + ", ".join(
                f"`{k}` = {link.locked[k]}" for k in forced) + "; this run uses those values.",
                icon=":material/lock:")
        try:
            ss[RUN] = engine.submit(cfg, owner=owner, name=run_name or cfg.name)
        except ConfigError as e:
            st.error(f"Cannot train: **{e.field or 'config'}**: {e.message}")


# -- the run being watched -----------------------------------------------------------------------
def fmt_eta(eta) -> str:
    if not isinstance(eta, (int, float)) or not math.isfinite(eta):
        return "estimating…"
    return f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.1f} min"


def progress_bar(snap: dict) -> None:
    status, phase = snap["status"], snap["phase"]
    epochs = snap["config"]["train"]["epochs"]
    if status == "queued":
        ahead, wait = snap.get("queue_position") or 0, snap.get("queue_eta_s")
        st.progress(0.0, text=f"Queued: position {ahead + 1} ({ahead} queued ahead of it)"
                    + (f" · starts in about {fmt_eta(wait)}." if wait is not None else "."))
    elif status in ("running", "paused") and phase in ("teacher", "baseline"):
        st.progress(min(1.0, snap["phase_progress"]), text=snap["phase_message"])
    elif status in ("running", "paused") and phase == "student":
        st.progress(min(1.0, snap["progress"]),
                    text=f"Student: epoch {snap['epoch']:.1f} of {epochs} · ETA {fmt_eta(snap['eta_s'])}"
                    + (" · paused" if status == "paused" else ""))
    elif status in ("running", "paused"):
        st.progress(0.0, text=snap["phase_message"] or phase)
    else:
        took = snap["summary"].get("elapsed_s")
        st.progress(min(1.0, snap["progress"]) if status != "done" else 1.0,
                    text=f"{status}" + (f" in {took:.1f} s" if took else ""))


def controls(snap: dict) -> None:
    rid, status = snap["run_id"], snap["status"]
    c1, c2, c3, c4 = st.columns([1, 1, 1, 4])
    if c1.button("Pause", key="lab_pause", icon=":material/pause:", disabled=status != "running"):
        engine.pause(rid)
    if c2.button("Resume", key="lab_resume", icon=":material/resume:", disabled=status != "paused"):
        engine.resume(rid)
    if c3.button("Stop", key="lab_stop", icon=":material/stop:", disabled=status not in ACTIVE):
        engine.stop(rid)
    if status in ("stopped", "interrupted") and engine.store.checkpoint_path(rid).exists():
        if c4.button("Continue from last epoch", key="lab_continue", icon=":material/replay:",
                     help="Resume this run from its last checkpoint (same run id)."):
            engine.resume_run(rid)
            st.rerun()


def headline(snap: dict) -> None:
    sm, latest = snap["summary"], snap["latest"]
    cols = st.columns(4)
    acc = latest.get("test_acc")
    cols[0].metric("student test acc.", f"{acc:.1%}" if acc is not None else "–")
    t = latest.get("teacher_test_acc", sm.get("teacher_test_acc"))
    cols[1].metric("teacher test acc.", f"{t:.1%}" if t is not None else "–")
    b = latest.get("baseline_test_acc", sm.get("baseline_test_acc"))
    cols[2].metric("student alone", f"{b:.1%}" if b is not None and b == b else "–",
                   help="Same student, trained with cross-entropy only (turn on 'baseline').")
    a = latest.get("agreement")
    cols[3].metric("agreement with teacher", f"{a:.1%}" if a is not None else "–")


def queue_view() -> None:
    active = owner_runs(active_only=True)
    if len(active) > 1 or (active and active[0]["run_id"] != ss.get(RUN)):
        st.caption("Your queue: " + " · ".join(
            f"`{r['run_id']}` {r['config']['method']['name']} ({r['status']})" for r in active))


def live_body(run_id: str, cfg_hash: str | None) -> None:
    snap = engine.snapshot(run_id)
    st.markdown(f"**Run** `{run_id}` · {snap['config']['method']['name']} on "
                f"{snap['config']['data']['name']} · status **{snap['status']}**")
    controls(snap)
    progress_bar(snap)
    queue_view()
    if cfg_hash and snap["status"] in ACTIVE and RunConfig.hash_of(snap["config"]) != cfg_hash:
        st.info("The settings above differ from this run's. Changes need a new run: press **Train** "
                "to queue one (this run keeps going), or **Stop** this run first.",
                icon=":material/restart_alt:")
    for note in dict.fromkeys(snap["notices"]):
        st.info(note, icon=":material/info:")
    if snap["error"] and snap["status"] == "failed":
        st.error(f"The run failed: {snap['error']}", icon=":material/error:")
        if snap["error"].startswith("DataUnavailable"):
            if st.button("Use digits instead (works offline)", key="lab_use_digits"):
                use_digits()
                st.rerun()
        if snap.get("traceback"):
            with st.expander("traceback"):
                st.code(snap["traceback"])
    headline(snap)
    charts.live_panel(snap, key="lab")


runs = owner_runs()
if not runs:
    runs = [dict(r, run_id=r["id"]) for r in stored_runs(limit=20, owner_only=True)]
if runs:
    ids = [r["run_id"] for r in runs]
    if ss.get(RUN) not in ids:       # first visit or reload: reattach to the newest active run
        active = [r["run_id"] for r in runs if r["status"] in ACTIVE]
        ss[RUN] = (active or ids)[0]
    st.divider()
    if len(runs) > 1:
        widgets.run_picker(runs, RUN, "Showing run", help="Your runs in this browser session.",
                           label_fn=lambda r: f"{r['run_id']} · {r['config']['method']['name']} · "
                                              f"{r['config']['data']['name']}"
                                              + (f" · {r['name']}" if r.get("name") else ""))
    watched = ss[RUN]
    live_fragment(live_body, lambda: engine.status(watched) in ACTIVE, watched,
                  cfg.hash if cfg else None, key="lab")
else:
    st.info("No runs yet. Load the **digits-quick** preset and press **Train**: it finishes in "
            "seconds on a laptop CPU.", icon=":material/rocket_launch:")
