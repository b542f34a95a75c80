"""TA gap: does a student learn less from a much larger teacher, and does a teacher assistant help?
(Mirzadeh et al. 2019, arXiv 1902.03393.)

The experiment itself is kdengine.experiments.ta_gap; this page chooses the ladder, launches it and draws the
curves as runs end (a fragment polls about once a second while it runs).
"""
from __future__ import annotations

import copy

import pandas as pd
import streamlit as st

from kdengine import (ConfigError, ModelConfig, RunConfig, TAGapSpec, TA_GAP_PRESET, get_experiment, is_running,
                      ladder, model_label, resume_experiment, shown_status, start_experiment, stored_results)
from ui import widgets
from ui.classroom import caller, lesson_locks, locks_notice, may_change, number_knob, with_locks
from ui.engine import get_engine, owner_id
from ui.live import live_fragment
from ui.sweep_charts import ladder_figure, ta_gap_figure
from ui.words import error_text, knob_label, plain

ss = st.session_state
engine = get_engine()
owner = owner_id()
FAMILIES = {"mlp": "MLP (width ladder)", "cnn": "CNN (depth ladder)", "resnet": "ResNet (depth ladder)"}
IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10")
SIZE_FIELDS = ("teacher.", "student.")          # the ladder sets these here
CURVE_COLUMNS = {"teacher_params": "teacher parameters", "teacher_acc": "teacher accuracy",
                 "direct": "direct KD", "direct_sd": "direct KD sd", "direct_n": "direct KD runs",
                 "via_ta": "via TA", "via_ta_sd": "via TA sd", "via_ta_n": "via TA runs",
                 "ta": "TA", "alone": "student alone", "alone_sd": "student alone sd"}


def locked_base(base: dict) -> dict:
    """An experiment's base (data, method, training) with the class lock; a lock on a model
    size does not apply, as the ladder is what this experiment varies."""
    locks = {k: v for k, v in lesson_locks().items() if not k.startswith(SIZE_FIELDS)}
    return with_locks(RunConfig.from_dict(base), locks).to_dict() if locks else base


st.title("TA gap")
st.caption("Train a ladder of sizes from scratch, distil the smallest from each larger one directly "
           "and through a teacher assistant (TA), over several seeds. The paper's rule picks the TA "
           "whose own accuracy is nearest the mean of teacher and student accuracy. At CPU sizes the "
           "paper's ordering (TA > direct) may or may not show: the chart shows what happens.")

sized = [knob_label(k) for k in lesson_locks() if k.startswith(SIZE_FIELDS)]
locks_notice(f"The ladder sets the model sizes here, so {', '.join(sized)} "
             f"{'does' if len(sized) == 1 else 'do'} not apply to this experiment." if sized else "")

# -- setup ---------------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
family = c1.selectbox("Family", list(FAMILIES), format_func=FAMILIES.get, key="ta_family")
data_name = c2.selectbox("Data", IMAGE_SETS if family != "mlp" else IMAGE_SETS + ("moons", "spirals"),
                         key="ta_data")
base_knob = (c3.number_input("MLP depth", 1, 4, 1, key="ta_depth") if family == "mlp" else
             c3.number_input("Base width (channels)", 4, 64, 8 if family == "cnn" else 16,
                             key="ta_width"))
base_model = (ModelConfig("mlp", int(base_knob), 64) if family == "mlp"
              else ModelConfig(family, 2, int(base_knob)))
full = ladder(family, base_model)
labels = [model_label(m) for m in full]
default_sizes = labels[:5] if family == "mlp" else labels[:4]
chosen = st.multiselect("Ladder (small to large)", labels, default=default_sizes, key=f"ta_sizes_{family}")
sizes = [m for m, lab in zip(full, labels) if lab in chosen]
d1, d2, d3, d4 = st.columns(4)
student = d1.selectbox("Student", range(max(1, len(sizes) - 1)),
                       format_func=lambda i: model_label(sizes[i]) if i < len(sizes) else "-",
                       key="ta_student")
ta_opts = ["rule"] + [i for i in range(student + 1, len(sizes) - 1)]
ta = d2.selectbox("Teacher assistant", ta_opts, key="ta_choice",
                  format_func=lambda o: "paper's rule" if o == "rule" else model_label(sizes[o]))
n_seeds = d3.number_input("Seeds", 1, 5, 2, key="ta_seeds")
epochs = number_knob(d4, "Epochs per run", "train.epochs", 1, 100, 8, "ta_epochs")


def launch(spec: TAGapSpec) -> None:
    try:
        ss["ta_exp"] = start_experiment(engine, spec, owner=owner).id
    except ConfigError as e:
        st.error(error_text(e), icon=":material/error:")


b1, b2 = st.columns(2)
if b1.button("Run TA-gap experiment", type="primary", key="ta_launch"):
    base = copy.deepcopy(TA_GAP_PRESET["base"])
    base["data"] = {"name": data_name}
    base["train"]["epochs"] = int(epochs)
    launch(TAGapSpec(base=locked_base(base), sizes=[m.__dict__ for m in sizes], student=int(student),
                     seeds=list(range(int(n_seeds))), ta=ta, family=family,
                     name=f"{FAMILIES[family]} on {data_name}"))
if b2.button("Run the workshop preset (hierarchy data, a few minutes)", key="ta_preset"):
    launch(TAGapSpec.from_dict({**TA_GAP_PRESET, "base": locked_base(TA_GAP_PRESET["base"])}))

widgets.stored_sweep_picker(engine.store, "ta_gap", "ta_exp", "Experiment", limit=30)


# -- the live view -------------------------------------------------------------------------------
def view(exp_id: str) -> None:
    exp = get_experiment(exp_id)
    res = exp.results() if exp else stored_results(engine.store, exp_id)
    row = engine.store.get_sweep(exp_id)
    status = shown_status((row or {}).get("status", "?"), exp)
    if res is None:
        st.warning("This experiment is not in the store any more.")
        return
    st.progress(res["progress"], text=f"{status} · {res['progress']:.0%} of the runs")
    err = exp.error if exp else (row or {}).get("state", {}).get("error")
    if err:
        st.error(plain(err), icon=":material/error:")
    with st.container(key="ta_curve"):
        st.plotly_chart(ta_gap_figure(res), key=f"tacurve_{exp_id}", config={"displayModeBar": False})
    left, right = st.columns([3, 2])
    df = pd.DataFrame(res["ladder"]).rename(columns={"scratch_acc": "accuracy (scratch)",
                                                     "scratch_sd": "sd"})

    def mark(r):
        color = "background-color: rgba(84,162,75,0.25)" if r["role"] == "TA pick" else ""
        return [color] * len(r)
    left.dataframe(df.style.apply(mark, axis=1).format({"accuracy (scratch)": "{:.2%}", "sd": "{:.2%}"},
                                                       na_rep="…"), hide_index=True)
    picks = [c for c in res["curves"] if c.get("ta")]
    if picks:
        left.caption("TA picked for each teacher: " +
                     "; ".join(f"{c['teacher']} → **{c['ta']}**" for c in picks))
    with right:
        st.plotly_chart(ladder_figure(res), key=f"taladder_{exp_id}", config={"displayModeBar": False})
    with st.expander("Curve data"):
        st.dataframe(pd.DataFrame(res["curves"]).rename(columns=CURVE_COLUMNS), hide_index=True)
    if not may_change((row or {}).get("owner", "")):     # another student's experiment: read only
        return
    if exp is not None and not exp.done and st.button("Stop", key=f"ta_stop_{exp_id}"):
        exp.stop(caller=caller())
    if status in ("interrupted", "stopped", "failed") and st.button(
            "Resume (finished runs are reused)", key=f"ta_resume_{exp_id}"):
        resume_experiment(engine, exp_id, caller=caller())
        st.rerun()


eid = ss.get("ta_exp")
if eid:
    live_fragment(view, lambda: is_running(eid), eid, key="ta_gap")
else:
    st.info("No experiment yet: run the preset, or choose a ladder and press Run.",
            icon=":material/info:")
