"""Warm-up in the background: the first page of a fresh server draws at once while torch, the
methods and plotly import on a daemon thread (about 5-10 s on a 2-core machine). A page that needs
them first simply waits on Python's import lock, never on an idle machine."""
from __future__ import annotations

import threading

_started = False
_lock = threading.Lock()


def _warm() -> None:
    try:
        import plotly.graph_objects  # noqa: F401
        import pandas  # noqa: F401
        from kdengine import method_names
        method_names()                       # imports torch and every method module
    except Exception:   # best effort: a page that needs these reports its own import errors
        pass


def start() -> None:
    """Start the warm-up once per server process (cheap to call on every script run)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_warm, name="kd-warmup", daemon=True).start()
