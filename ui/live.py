"""The one way for a page to watch something that changes in a background thread (a run, a sweep,
a TA-gap experiment): a fragment that redraws every ``every`` seconds while it is active. Pages never
call ``st.fragment(run_every=...)`` themselves (tests/test_app_live_views.py checks), so every live
view is inside the server's redraw budget below and stops polling when what it watches ends.

When the watched thing stops being active, the fragment asks for a full rerun (and asks again at
each redraw until one has drawn the page): the page then draws its final state (buttons that depend
on the status, the stored results) and, being no longer active, stops polling. Worker threads never
call ``st.*``; ``render`` reads snapshots.

Every redraw is a script run in the one server process, whoever asks. A class of 30 students each
redrawing 5 times a second (the hurried wait for a first point) asked the server for 150 reruns a
second: it answered none, its health check took seconds, and no student saw a point
(``bench/classroom.py --http --driver ws --sessions 30``). So the server shares a budget,
``KD_RERUNS_PER_S`` redraws a second for all live views together (:class:`Pollers`): a view redraws
every ``max(its own interval, views polling now / budget)`` seconds. One student alone still gets
0.2 s; eight wait at most 0.7 s; thirty see a point every 2.5 s.
"""
from __future__ import annotations

import functools
import math
import os
import threading
import time
from typing import Any, Callable

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

HURRY_EVERY = 0.2      # seconds between redraws while ``hurry()`` holds
SLOW_EVERY = 3.0       # seconds between redraws while ``slow()`` holds


def rerun_budget() -> float:
    """Live redraws per second the server answers for all sessions together (``KD_RERUNS_PER_S``)."""
    try:
        return max(1.0, float(os.environ.get("KD_RERUNS_PER_S", "12")))
    except ValueError:
        return 12.0


class Pollers:
    """The live views polling now, server-wide: ``(session, key)`` -> when the entry lapses (a
    view that stops redrawing, its tab closed, drops out after a few of its intervals)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str], float] = {}

    def interval(self, who: tuple[str, str], base: float, budget: float, expected: int = 0) -> float:
        """Mark ``who`` as polling and return its share of the budget: at least ``base``.
        ``expected``: views the caller knows are coming (students whose runs just started), so that
        a class pressing Train together plans for all of them from its first redraw."""
        now = time.monotonic()
        with self._lock:
            self._until[who] = now + max(10.0, 4 * base)
            for k in [k for k, t in self._until.items() if t < now]:
                del self._until[k]
            n = max(len(self._until), expected)
        return max(base, n / budget)

    def leave(self, who: tuple[str, str]) -> None:
        with self._lock:
            self._until.pop(who, None)

    def count(self) -> int:
        with self._lock:
            return len(self._until)


@st.cache_resource
def pollers() -> Pollers:
    return Pollers()


def _who(key: str) -> tuple[str, str]:
    ctx = get_script_run_ctx()
    return (ctx.session_id if ctx is not None else "", key)


def live_fragment(render: Callable[..., Any], is_active: Callable[[], bool], *args: Any,
                  key: str, every: float = 1.0, hurry: Callable[[], bool] | None = None,
                  slow: Callable[[], bool] | None = None,
                  expected: Callable[[], int] | None = None,
                  stale: Callable[[], bool] | None = None) -> None:
    """Draw ``render(*args)`` now and again every ``every`` seconds while ``is_active()``.

    ``key`` names the view among the server's pollers. When the activity ends, a redraw of a
    fragment drawn active asks for a full page rerun; the page run that follows draws the fragment
    inactive, which asks no more. Until such a run completes (a rerun request lost or cut short on
    a busy server), every further redraw asks again, so a view cannot stay stuck on "running".
    ``hurry()``: while it holds (a run that has just started and shows no point yet), redraw every
    ``HURRY_EVERY`` seconds instead, then rerun the page once to go back to ``every``. A fragment
    keeps the interval it was drawn with, so only a page rerun can change it.
    ``slow()``: while it holds (and ``hurry()`` does not), little can change (a run queued or
    paused): redraw every ``SLOW_EVERY`` seconds, then rerun the page once when it stops holding.
    Each redraw costs the server CPU for every watching session, so a class's idle views are cheap.
    ``expected()``: how many views of this kind the server should plan for beyond those polling
    now (the Lab: sessions with an active run), shared out of ``KD_RERUNS_PER_S`` (see the module).
    ``stale()``: asked at each redraw while active; when it holds, what the page drew around the
    fragment is out of date (Soft targets: the run wrote a newer checkpoint than the page loaded),
    so the whole page reruns instead of the fragment alone.
    """
    active = bool(is_active())
    hurried = active and hurry is not None and bool(hurry())
    slowed = active and not hurried and slow is not None and bool(slow())
    who, budget = _who(key), rerun_budget()
    base = HURRY_EVERY if hurried else SLOW_EVERY if slowed else every

    def share() -> float:
        return pollers().interval(who, base, budget, expected() if expected is not None else 0)

    interval = share() if active else None
    if not active:
        pollers().leave(who)

    # wraps: the fragment keeps render's identity, as if the page had decorated render itself
    @functools.wraps(render)
    def body(*a: Any) -> None:
        # First, before drawing: a view drawn when few others polled yet (a class pressing Train
        # together) re-plans at once, without spending a redraw on an overloaded server
        if active and _off_by_twice(share(), interval):
            st.rerun()      # the class grew or shrank: a fragment keeps its interval until redrawn
        render(*a)
        if active and not is_active():      # drawn active, now ended: the page's final state
            pollers().leave(who)
            st.rerun()
        elif active and stale is not None and stale():
            st.rerun()
        elif hurried and not hurry():
            st.rerun()
        elif slowed and not slow():
            st.rerun()

    st.fragment(body, run_every=interval if active else None)(*args)


def live_run(render: Callable[..., Any], run_id: str, *args: Any, key: str, every: float = 1.0,
             **more: Any) -> None:
    """:func:`live_fragment` for one run: draw ``render(run_id, *args)``, again while the run is
    queued, running or paused (seldom while it waits: queued or paused), whether the run is in this
    engine's memory or training in another process (its status read from the store). ``more``:
    ``hurry``, ``expected``, ``stale`` as for :func:`live_fragment`."""
    from kdengine import ACTIVE
    from ui.engine import get_engine
    engine = get_engine()
    live_fragment(render, lambda: engine.status(run_id) in ACTIVE, run_id, *args, key=key,
                  every=every, slow=lambda: engine.status(run_id) in ("queued", "paused"), **more)


def _off_by_twice(fair: float, drawn: float) -> bool:
    return abs(math.log(fair / drawn)) > math.log(2.0)
