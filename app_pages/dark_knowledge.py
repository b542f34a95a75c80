"""Dark knowledge: the omitted-class lesson (Hinton, Vinyals & Dean 2015, s.3).

Pick a finished run whose transfer set lacked one class (``data.omit_class``); see its per-class
test accuracy, and move a bias shift on the omitted class's logit (applied at evaluation only).
The numbers come from ``kdengine.analysis.dark_knowledge``; this page is widgets and layout.
"""
from __future__ import annotations

import streamlit as st
import torch

from kdengine.analysis import dark_knowledge as omitted
from kdengine import data_root
from ui import widgets
from ui.engine import get_engine, owner_id, owner_runs, stored_runs
from ui.omitted_charts import per_class_figure, shift_curve_figure

PRESET = "digits-omit-3"
SHIFTS = [x / 4 for x in range(-8, 41)]          # -2 .. 10 in steps of 0.25

st.title("Dark knowledge: the omitted class")
st.markdown(
    "Hinton et al. removed **every 3** from the student's transfer set. Trained on the teacher's "
    "soft targets for the other digits, the student still recognised most 3s: it made 206 test "
    "errors, 133 of them on the 1010 threes, and raising the **bias of class 3 by 3.5** fixed most "
    "of those. The teacher's probabilities for 3 on 2s, 5s and 8s carried the knowledge; only "
    "the student's prior for the class it never saw was too low.")


@st.cache_data(show_spinner="Rebuilding the student from its checkpoint...", max_entries=8)
def _logits(run_id: str, root: str):
    d = omitted.run_test_logits(run_id, get_engine().store)
    return d["logits"].numpy(), d["y"].numpy(), d["class_names"], d["omit_class"]


runs = [r for r in stored_runs() if r["status"] in ("done", "stopped")
        and (r["config"].get("data") or {}).get("omit_class") is not None]
active = [r for r in owner_runs(active_only=True)
          if (r["config"].get("data") or {}).get("omit_class") is not None]

c1, c2 = st.columns([3, 1])
with c2:
    if st.button(f"Train the {PRESET} preset", icon=":material/play_arrow:",
                 help="Hinton KD on digits with every 3 removed from the transfer set (~1 min)."):
        from ui.state import load_preset
        get_engine().submit(load_preset(PRESET), owner=owner_id(), name=PRESET)
        st.rerun()
for r in active:
    st.info(f"Run {r['run_id']} is {r['status']} ({r['progress']:.0%}); it appears below when it "
            f"finishes.", icon=":material/hourglass_top:")
with c1:
    run_id = widgets.run_picker(runs, key="dk_run", label="Run with an omitted class")
if run_id is None:
    st.stop()

try:
    logits, y, names, cls = _logits(run_id, str(data_root()))
except (FileNotFoundError, KeyError) as e:
    st.error(f"{e}", icon=":material/error:")
    st.stop()
logits, y = torch.from_numpy(logits), torch.from_numpy(y)

shift = st.slider(f"Bias shift on class {names[cls]} (added to its logit at evaluation)",
                  min_value=-2.0, max_value=10.0, value=0.0, step=0.25, key="dk_shift")
base = omitted.omitted_report(logits, y, cls, 0.0)
rep = omitted.omitted_report(logits, y, cls, shift)

m1, m2, m3, m4 = st.columns(4)
m1.metric("Test accuracy", f"{rep['acc']:.2%}", f"{(rep['acc'] - base['acc']) * 100:+.2f} pts")
m2.metric(f"Accuracy on class {names[cls]}", f"{rep['class_acc']:.2%}",
          f"{(rep['class_acc'] - base['class_acc']) * 100:+.2f} pts")
m3.metric(f"Errors on the {rep['n_class']} {names[cls]}s", rep["class_errors"],
          rep["class_errors"] - base["class_errors"], delta_color="inverse")
m4.metric(f"Wrongly called {names[cls]}", rep["false_class"],
          rep["false_class"] - base["false_class"], delta_color="inverse",
          help="What too large a shift costs: other digits now predicted as the omitted class.")

g1, g2 = st.columns(2)
with g1:
    st.plotly_chart(per_class_figure(names, base["per_class_acc"], rep["per_class_acc"], shift, cls),
                    config={"displayModeBar": False}, key="dk_bars")
with g2:
    curve = omitted.bias_curve(logits, y, cls, SHIFTS)
    st.plotly_chart(shift_curve_figure(curve, shift, names[cls]), config={"displayModeBar": False},
                    key="dk_curve")
best = omitted.best_shift(logits, y, cls, SHIFTS)
st.caption(f"Fewest test errors at a shift of {best:g} (as in the paper, this is chosen on the test "
           f"set, so it flatters the correction a little).")
