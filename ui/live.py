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

HURRY_EVERY = 0.2      # seconds between redraws while ``hurry()`` holds
SLOW_EVERY = 3.0       # seconds between redraws while ``slow()`` holds


def live_fragment(render: Callable[..., Any], is_active: Callable[[], bool], *args: Any,
                  key: str, every: float = 1.0, hurry: Callable[[], bool] | None = None,
                  slow: Callable[[], bool] | None = None) -> None:
    """Draw ``render(*args)`` now and again every ``every`` seconds while ``is_active()``.

    ``key`` names the session-state flag that remembers the page was polling, so the fragment
    reruns the whole page exactly once when the activity ends (not on every later redraw).
    ``hurry()``: while it holds (a run that has just started and shows no point yet), redraw every
    ``HURRY_EVERY`` seconds instead, then rerun the page once to go back to ``every``. A fragment
    keeps the interval it was drawn with, so only a page rerun can change it.
    ``slow()``: while it holds (and ``hurry()`` does not), little can change (a run queued or
    paused): redraw every ``SLOW_EVERY`` seconds, then rerun the page once when it stops holding.
    Each redraw costs the server CPU for every watching session, so a class's idle views are cheap.
    """
    flag = f"live_polling.{key}"
    active = bool(is_active())
    hurried = active and hurry is not None and bool(hurry())
    slowed = active and not hurried and slow is not None and bool(slow())
    st.session_state[flag] = active

    # wraps: the fragment keeps render's identity, as if the page had decorated render itself
    @functools.wraps(render)
    def body(*a: Any) -> None:
        render(*a)
        if st.session_state.get(flag) and not is_active():
            st.session_state[flag] = False
            st.rerun()
        elif hurried and not hurry():
            st.rerun()
        elif slowed and not slow():
            st.rerun()

    interval = HURRY_EVERY if hurried else SLOW_EVERY if slowed else every
    st.fragment(body, run_every=interval if active else None)(*args)
