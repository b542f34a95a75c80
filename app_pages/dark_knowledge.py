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
from ui import charts, widgets
from ui.boundary_figs import PrebuiltFigure
from ui.classroom import caller, locks_notice, with_locks
from ui.engine import get_engine, owner_id, owner_runs, stored_runs
from ui.omitted_charts import shift_explorer_figure

PRESET = "digits-omit-3"
SHIFTS = [x / 4 for x in range(-8, 41)]          # -2 .. 10 in steps of 0.25

st.title("Dark knowledge: the omitted class")
st.markdown(
    "Hinton et al. removed **every 3** from the student's transfer set. Trained on the teacher's "
    "soft targets for the other digits, the student still recognised most 3s: it made 206 test "
    "errors, 133 of them on the 1010 threes, and raising the **bias of class 3 by 3.5** fixed most "
    "of those. The teacher's probabilities for 3 on 2s, 5s and 8s carried the knowledge; only "
    "the student's prior for the class it never saw was too low.")
locks_notice()


@st.cache_data(show_spinner="Rebuilding the student from its checkpoint...", max_entries=8)
def _logits(run_id: str, root: str):
    d = omitted.run_test_logits(run_id, get_engine().store)
    return d["logits"].numpy(), d["y"].numpy(), d["class_names"], d["omit_class"]


runs = omitted.omitted_runs(stored_runs())
active = [r for r in owner_runs(active_only=True) if omitted.omits_a_class(r)]

c1, c2 = st.columns([3, 1])
with c2:
    if st.button(f"Train the {PRESET} preset", icon=":material/play_arrow:",
                 help="Hinton KD on digits with every 3 removed from the transfer set (~1 min)."):
        from ui.state import load_preset
        get_engine().submit(with_locks(load_preset(PRESET)), owner=owner_id(), name=PRESET,
                            caller=caller())
        st.rerun()
for r in active:
    st.info(f"Run {r.run_id} is {r.status} ({r.progress:.0%}); it appears below when it "
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

# The shift only changes what is drawn: every shift's numbers go to the browser as one frame each,
# and the figure's own slider moves between them without a server rerun.
curve = omitted.bias_curve(logits, y, cls, SHIFTS)
with st.container(key="dk_view"):
    charts.show(PrebuiltFigure(shift_explorer_figure(names, curve, cls, SHIFTS.index(0.0))),
                key="dk_figure")
best = omitted.best_shift(logits, y, cls, SHIFTS)
st.caption(f"Move the bias shift on class {names[cls]} (added to its logit at evaluation) with the "
           f"slider under the charts. Fewest test errors at a shift of {best:g} (as in the paper, "
           f"this is chosen on the test set, so it flatters the correction a little).")
