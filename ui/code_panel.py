"""The running code on the page: a method's loss as its formula and as the ``loss_terms`` code that
trains it, read from the method's own file (``kdengine.method_source``: a copied or edited method
shows its own code), with each term the code returns named under it. In the Lab those names are
buttons: a press brings that term's live chart to the top of the run's charts (``focused_term``,
which ``ui/charts.py:live_panel`` reads)."""
from __future__ import annotations

import streamlit as st


def focus_key(key: str) -> str:
    return f"{key}_term"


def focused_term(key: str) -> str | None:
    """The term whose chart the code panel ``key`` asked to show first, or None."""
    return st.session_state.get(focus_key(key))


def _focus(key: str, term: str | None) -> None:
    st.session_state[focus_key(key)] = term


def code_panel(method: str, key: str, charted: bool | None = None, note: str = "") -> None:
    """The panel for method ``method``. ``charted``: None draws no term buttons (a page without
    loss charts); True makes them select the charts of the run shown; False shows them disabled,
    with ``note`` saying why (no run of this method is shown)."""
    from kdengine import get_method_class, method_source, term_names
    cls = get_method_class(method)
    if cls.formula:
        st.latex(cls.formula)
    st.caption(f"The code that computes this loss while the run trains ({cls.paper}). Each line "
               f"returns one named term; the trainer multiplies each by its weight and adds them up.")
    try:
        source = method_source(cls)
    except (OSError, LookupError) as e:      # a method whose file is gone or not plain source
        st.warning(f"Its code cannot be shown: {e}")
        return
    with st.container(key=f"{key}_code"):
        st.code(source, language="python")
    if charted is None:
        return
    names = term_names(cls)
    st.caption("Each term has a chart of its own below (weighted, as the optimiser sees it). "
               "Press a name to bring its chart to the top." if charted else note)
    cols = st.columns(max(4, len(names) + 1))
    for name, col in zip(names, cols):
        col.button(name, key=f"{key}_term_{name}", on_click=_focus, args=(key, name),
                   disabled=not charted, type="primary" if focused_term(key) == name else "secondary",
                   help=f"Show the chart of the term the code calls \"{name}\" first.")
    if charted and focused_term(key):
        cols[len(names)].button("all charts", key=f"{key}_term_none", on_click=_focus,
                                args=(key, None), type="tertiary")
