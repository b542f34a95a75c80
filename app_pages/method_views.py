"""Method views: what some methods learn beyond their loss curves — Sobolev's function and gradient
field on 2-D data, and the specialists' class clusters with the ensemble's gain. A live run's view
redraws while it trains (``ui.live``); a finished run's is drawn once."""
from __future__ import annotations

import streamlit as st

from ui import charts, widgets
from ui.engine import get_engine, stored_runs
from ui.code_panel import code_panel
from ui.live import live_run
from ui.method_figs import sobolev_field_figure, specialists_figure

VIEWS = {"sobolev": "sobolev_field", "specialists": "specialists"}

engine = get_engine()
st.title("Method views")
st.caption("Sobolev training matches the teacher's input gradients, not only its outputs; "
           "specialists each take a group of classes the generalist predicts together. Pick a run "
           "of either method.")

runs = [r for r in stored_runs() if r.config["method"]["name"] in VIEWS]
run_id = widgets.run_picker(runs, key="mv_run")
if run_id is None:
    st.info("Train a Sobolev run on 2-D data (the moons-sobolev preset in the Lab) or a specialists "
            "run on digits; its view appears here.", icon=":material/info:")
    st.stop()


def view(run_id: str) -> None:
    snap = engine.snapshot(run_id)
    method = snap.config["method"]["name"]
    art = snap.artifacts.get(VIEWS[method])
    st.markdown(f"**{method}** · {snap.config['data']['name']} · status **{snap.status}**")
    if art is None:
        st.info("No view stored for this run yet (it appears after the first epoch; Sobolev's "
                "field exists for 2-D data only).", icon=":material/hourglass_top:")
        return
    if method == "sobolev":
        names = [f"class {c}" for c in range(len(art["teacher"]["logits"][0]))]
        c = st.selectbox("class", range(len(names)), format_func=names.__getitem__, key="mv_class")
        with st.container(key="mv_sobolev"):
            charts.show(sobolev_field_figure(art, c, names[c]))
        st.caption("Colour: the model's logit for the class; arrows: its gradient with respect to the "
                   "input. Sobolev training fits the student's arrows to the teacher's along random "
                   "directions (Jacobian-vector products), not only the colours.")
    else:
        a, b, d = st.columns(3)
        gen, ens = art["generalist_test_acc"], art["ensemble_test_acc"]
        a.metric("generalist test acc.", f"{gen:.1%}")
        b.metric("generalist + specialists", f"{ens:.1%}", f"{(ens - gen) * 100:+.2f} points")
        d.metric("specialists", len(art["clusters"]))
        with st.container(key="mv_specialists"):
            charts.show(specialists_figure(art))
        st.caption("Each outlined block is one specialist's group of classes, found from which "
                   "classes the generalist predicts together (as in the paper, without labels); "
                   "all other classes are its dustbin class. The combined distribution q minimises "
                   "KL(p_gen‖q) + Σ KL(p_m‖q) over the active specialists. The paper stops there; "
                   "distilling q into one student is this app's addition.")


live_run(view, run_id, key="method_views")
method = next(r.config["method"]["name"] for r in runs if r.run_id == run_id)
with st.expander(f"The loss in code: {method}", icon=":material/code:"):
    code_panel(method, "mv")
