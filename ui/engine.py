"""The one Engine per server process, and the per-browser-session owner id.

Every run is submitted with ``owner=owner_id()``, so two tabs (two sessions) never see each other's
runs. The owner id lives in ``st.session_state`` and is mirrored into the URL (``?sid=...``): a page
reload starts a new session, reads the id back from the URL and reattaches to that owner's runs.
Worker threads never call ``st.*``; pages read runs as ``RunSnapshot``s, one shape whether the run
is in the engine's memory or only in the store: ``engine.snapshot(run_id)``, :func:`owner_runs`,
:func:`stored_runs`.
"""
from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from kdengine import RunSnapshot


OWNER_KEY = "kd_owner"
OWNER_PARAM = "sid"
_OWNER_RE = re.compile(r"^[0-9a-f]{12}$")


@st.cache_resource(show_spinner=False)
def _engine_for(root: str):
    # Import pandas (and plotly's lazy pandas check) on this thread before any worker exists: a
    # worker importing it through scikit-learn while a page's chart imports it gave a
    # "partially initialized module 'pandas'" error.
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    from kdengine import Engine, Store
    from kdengine.run.serving import serving_options
    from kdengine.teaching.classroom import instructor_token
    engine = Engine(store=Store(root), **serving_options())   # worker processes for a class
    instructor_token()          # printed to the server's console now, unless set by env var
    return engine


def get_engine():
    """The process-wide Engine for the current data folder (``KD_RUNS_DIR``)."""
    from kdengine import data_root
    return _engine_for(str(data_root()))


def owner_id() -> str:
    """This browser session's owner id (kept across reloads through the ``sid`` query param)."""
    ss = st.session_state
    if OWNER_KEY not in ss:
        from_url = st.query_params.get(OWNER_PARAM, "")
        ss[OWNER_KEY] = from_url if _OWNER_RE.match(from_url or "") else uuid.uuid4().hex[:12]
    if st.query_params.get(OWNER_PARAM) != ss[OWNER_KEY]:
        st.query_params[OWNER_PARAM] = ss[OWNER_KEY]   # page switches clear the URL; put it back
    return ss[OWNER_KEY]


def owner_runs(active_only: bool = False) -> list[RunSnapshot]:
    """Light snapshots of this owner's runs held by the engine, newest first."""
    runs = get_engine().runs(owner_id())
    return [r for r in runs if r.active] if active_only else runs


def stored_runs(limit: int = 300, owner_only: bool = False) -> list[RunSnapshot]:
    """Light snapshots of the stored runs (all sessions' runs are shared history), newest first;
    a run the engine holds is as it is now."""
    return get_engine().list_runs(owner=owner_id() if owner_only else None, limit=limit)


def find_run(run_id: str) -> RunSnapshot | None:
    """One run, whoever's and wherever it is (the engine's memory or the store); None when there is
    no such run (deleted, or stored on another machine)."""
    try:
        return get_engine().snapshot(run_id)
    except KeyError:
        return None
