"""One way for a page to watch something that changes in a background thread (a run, a sweep, a
TA-gap experiment): a fragment that redraws every ``every`` seconds while it is active.

When the watched thing stops being active, the fragment asks for one full rerun: the page then
draws its final state (buttons that depend on the status, the stored results) and, being no longer
active, stops polling. Worker threads never call ``st.*``; ``render`` reads snapshots.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import streamlit as st


def live_fragment(render: Callable[..., Any], is_active: Callable[[], bool], *args: Any,
                  key: str, every: float = 1.0) -> None:
    """Draw ``render(*args)`` now and again every ``every`` seconds while ``is_active()``.

    ``key`` names the session-state flag that remembers the page was polling, so the fragment
    reruns the whole page exactly once when the activity ends (not on every later redraw).
    """
    flag = f"live_polling.{key}"
    active = bool(is_active())
    st.session_state[flag] = active

    # wraps: the fragment keeps render's identity, as if the page had decorated render itself
    @functools.wraps(render)
    def body(*a: Any) -> None:
        render(*a)
        if st.session_state.get(flag) and not is_active():
            st.session_state[flag] = False
            st.rerun()

    st.fragment(body, run_every=every if active else None)(*args)
