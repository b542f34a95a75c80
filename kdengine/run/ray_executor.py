"""The Ray executor: every unit of work (a run, or a group of stacked runs) as one Ray actor.

Set ``KD_RAY_ADDRESS`` (``auto``, ``ray://head:10001``, or ``local`` for a Ray instance on this
machine) and the engine sends every unit to the cluster: Lab runs, lessons, sweep cells, search
trials, chain links alike, through the same fair queue. An actor asks for one CPU (Ray queues
actors beyond the cluster's CPUs), trains its unit with :func:`~kdengine.run.units.train_unit` in a
thread and buffers the events, which this executor polls a few times a second and hands to the
engine; the store, and every checkpoint (an event like any other), stay on this machine, so nodes
need no shared disk. An actor that dies with its node is reported lost, and the engine continues
its runs from their last checkpoints on another node. Needs ``pip install -r
requirements-cluster.txt``.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

from kdengine.run.executors import OnEvent, OnLost

POLL_SECONDS = 0.2


class _UnitActor:
    """Lives on a Ray worker: trains one unit in a thread, buffers its events for ``poll``."""

    def __init__(self, unit, paused: list[str], stopped: list[str], runs_dir: str | None):
        import tempfile
        if not (runs_dir and os.path.isdir(runs_dir)):   # a node with a disk of its own: cached
            runs_dir = os.path.join(tempfile.gettempdir(), "kd_runs")   # teachers and data here
        os.environ["KD_RUNS_DIR"] = runs_dir
        from kdengine.run.control import Control
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.controls = {t.run_id: Control() for t in unit.runs}
        for rid in paused:
            self.controls[rid].pause()
        for rid in stopped:
            self.controls[rid].stop()
        threading.Thread(target=self._run, args=(unit,), daemon=True).start()

    def _emit(self, run_id: str, ev) -> None:
        with self.lock:
            self.events.append((run_id, ev))

    def _run(self, unit) -> None:
        import torch
        from kdengine.run.units import train_unit
        torch.set_num_threads(1)
        train_unit(unit, self.controls, self._emit)

    def poll(self) -> list:
        """The events since the last poll."""
        with self.lock:
            out, self.events = self.events, []
        return out

    def command(self, run_id: str, verb: str) -> None:
        if run_id in self.controls:
            getattr(self.controls[run_id], verb)()


class RayExecutor:
    """An executor whose slots are the cluster's CPUs; the engine treats it like a worker."""

    kind = "ray"

    def __init__(self, index: int, address: str, on_event: OnEvent, on_lost: OnLost):
        import ray
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.index = index
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.active: set[str] = set()
        self.ready = threading.Event()
        self.ready.set()
        self._on_event, self._on_lost = on_event, on_lost
        self._actors: dict[str, Any] = {}          # unit id -> actor
        self._runs: dict[str, str] = {}            # run id -> unit id
        self._lock = threading.Lock()
        self._closed = False
        # A lost actor is not restarted by Ray: the engine decides what its runs do next.
        self._remote = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(_UnitActor)
        self._poller = threading.Thread(target=self._poll_loop, name="kd-ray-poll", daemon=True)
        self._poller.start()

    def start(self, unit, controls) -> None:
        from kdengine.core.paths import data_root
        paused = [rid for rid, c in controls.items() if c.paused]
        stopped = [rid for rid, c in controls.items() if c.stopped]
        actor = self._remote.remote(unit, paused, stopped, str(data_root()))
        with self._lock:
            self._actors[unit.unit_id] = actor
            self._runs.update({t.run_id: unit.unit_id for t in unit.runs})

    def command(self, run_id: str, verb: str) -> None:
        actor = self._actors.get(self._runs.get(run_id, ""))
        if actor is not None:
            actor.command.remote(run_id, verb)

    def close(self, wait: bool = True) -> None:
        """Stop every run (waiting up to 30 s for their last events with ``wait``), then end the
        poll thread before returning: nothing may touch Ray once its owner shuts it down."""
        import ray
        self._closed = True
        for rid in list(self._runs):
            self.command(rid, "stop")
        if wait:
            end = time.monotonic() + 30
            while self._actors and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        with self._lock:
            actors, self._actors = list(self._actors.values()), {}
            self._runs.clear()
        self._poller.join(timeout=10)
        for actor in actors:
            ray.kill(actor)

    def _poll_loop(self) -> None:
        """One poll in flight per actor; an actor still waiting for a CPU (or on a slow node) holds
        up no one else's events."""
        import ray
        from kdengine.core.events import Ended
        polls: dict[str, Any] = {}              # unit id -> its poll in flight
        while not (self._closed and not self._actors):   # close() empties _actors last
            with self._lock:
                actors = dict(self._actors)
            for uid, actor in actors.items():
                polls.setdefault(uid, actor.poll.remote())
            for uid in [u for u in polls if u not in actors]:
                del polls[uid]
            if not polls:
                time.sleep(POLL_SECONDS)
                continue
            ready, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=POLL_SECONDS)
            for uid in [u for u, ref in polls.items() if ref in ready]:
                ref = polls.pop(uid)
                try:
                    events = ray.get(ref)
                except Exception as e:   # the actor or its node died
                    self._forget(uid)
                    self._on_lost(self, [uid], f"Ray lost its worker: {type(e).__name__}")
                    continue
                for run_id, ev in events:
                    try:
                        self._on_event(run_id, ev)
                    except Exception:
                        traceback.print_exc()
                    if isinstance(ev, Ended):
                        with self._lock:
                            self._runs.pop(run_id, None)
                if uid not in self._runs.values():       # every run of the unit has ended
                    self._forget(uid)
                    ray.kill(actors[uid])
            time.sleep(POLL_SECONDS / 4)

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._actors.pop(uid, None)
            for rid in [r for r, u in self._runs.items() if u == uid]:
                del self._runs[rid]
