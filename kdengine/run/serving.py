"""How a class server runs its engine: worker processes sized from the machine, or threads.

``KD_SERVE=processes`` (the web app's default) starts one worker process per core, fewer when
memory is short (each holds torch and its runs: about ``PER_WORKER_BYTES``), each time-slicing up
to ``KD_SLOTS`` runs (default 4). ``KD_WORKER_PROCESSES`` pins the number of processes.
``KD_RAY_ADDRESS`` (``auto``, ``ray://head:10001``, ``local``) sends every run to a Ray cluster
instead (:mod:`kdengine.run.ray_executor`): one worker actor per CPU, each time-slicing up to
``KD_SLOTS`` runs as a worker process does. ``KD_SERVE=threads`` keeps the single-process engine
(``KD_MAX_WORKERS`` threads, one run each).

With worker processes or Ray, runs that can stack wait ``KD_BATCH_WINDOW`` seconds (default 0.3; 0 turns it
off) for others of the same data, teacher and student, and train with them as one cohort
(:mod:`kdengine.run.group`): a class pressing Train together costs little more than one run.
"""
from __future__ import annotations

import os

PER_WORKER_BYTES = 1 << 30
DEFAULT_SLOTS = 4
DEFAULT_BATCH_WINDOW_S = 0.3


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def worker_processes() -> int:
    env = os.environ.get("KD_WORKER_PROCESSES", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    n = usable_cores()
    mem = available_memory()
    if mem is not None:
        n = min(n, max(1, mem // PER_WORKER_BYTES))
    return max(1, n)


def batch_window() -> float:
    try:
        return max(0.0, float(os.environ.get("KD_BATCH_WINDOW", DEFAULT_BATCH_WINDOW_S)))
    except ValueError:
        return DEFAULT_BATCH_WINDOW_S


def serving_options() -> dict:
    """Keyword arguments for ``Engine(...)`` in a server process."""
    if os.environ.get("KD_SERVE", "processes") == "threads" and not os.environ.get("KD_RAY_ADDRESS"):
        return {}
    slots = os.environ.get("KD_SLOTS", "")
    opts = {"slots": int(slots) if slots.isdigit() and int(slots) > 0 else DEFAULT_SLOTS,
            "batch_window_s": batch_window()}
    if os.environ.get("KD_RAY_ADDRESS"):        # a worker actor per CPU, each time-slicing
        return {"ray_address": os.environ["KD_RAY_ADDRESS"], **opts}
    return {"max_workers": worker_processes(), "processes": True, **opts}
