"""Warm-up in the background, once the first page of a fresh server is drawn: torch, the methods,
plotly and pandas import, the resource check makes its first (slow) pass and digits loads, on a
daemon thread, while the user reads the page. Started any earlier, it shares the interpreter
with the first page's own script and slows it down; the first Train press needs it done (cold,
its resource check and first optimizer step would otherwise be paid by that press; docs/perf.md)."""
from __future__ import annotations

import threading

_started = False
_lock = threading.Lock()


def _warm() -> None:
    try:
        import plotly.graph_objects  # noqa: F401
        import pandas  # noqa: F401
        from kdengine import DataConfig, RunConfig, check_resources, load_data
        from kdengine.run.serving import serving_options
        from kdengine.run.executors import first_steps
        import kdengine.run.trainer  # noqa: F401
        check_resources(RunConfig().validate())   # imports every method; the slow first meta-size pass
        load_data(DataConfig())
        opts = serving_options()
        if not (opts.get("processes") or opts.get("ray_address")):
            first_steps()          # runs train in this process: its first optimizer step imports
                                   # much of torch (worker processes warm up on their own)
    except Exception:   # best effort: a page or a run that needs these reports its own errors
        pass


def start() -> None:
    """Start the warm-up once per server process (cheap to call on every script run)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_warm, name="kd-warmup", daemon=True).start()
