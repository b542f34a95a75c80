"""The Ray executor: units of work (a run, or a group of stacked runs) trained by worker actors on a
Ray cluster.

Set ``KD_RAY_ADDRESS`` (``auto``, ``ray://head:10001``, or ``local`` for a Ray instance on this
machine) and the engine sends every unit to the cluster: Lab runs, lessons, sweep cells, search
trials, chain links alike, through the same fair queue. A worker actor asks for one CPU and trains
one unit at a time with :func:`~kdengine.run.units.train_unit` in a thread; it stays for the next
unit, so a class's runs do not each pay for a new process that imports torch. Up to one worker per
CPU of the cluster is started, where Ray finds room. The executor polls the workers' buffered events
a few times a second and hands them to the engine; the store, and every checkpoint (an event like
any other), stay on this machine, so nodes need no shared disk. A worker that dies with its node is
reported lost, and the engine continues its runs from their last checkpoints on the nodes left.
Needs ``pip install -r requirements-cluster.txt``.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

from kdengine.run.executors import OnEvent, OnLost

POLL_SECONDS = 0.2


class _Worker:
    """Lives on a Ray node: trains one unit at a time in a thread, buffers events for ``poll``."""

    def __init__(self, runs_dir: str | None):
        import tempfile
        if not (runs_dir and os.path.isdir(runs_dir)):   # a node with a disk of its own: cached
            runs_dir = os.path.join(tempfile.gettempdir(), "kd_runs")   # teachers and data here
        os.environ["KD_RUNS_DIR"] = runs_dir
        import torch
        torch.set_num_threads(1)
        from kdengine.run.executors import prewarm
        prewarm()
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.controls: dict = {}

    def start(self, unit, paused: list[str], stopped: list[str]) -> None:
        from kdengine.run.control import Control
        controls = {t.run_id: Control() for t in unit.runs}
        for rid in paused:
            controls[rid].pause()
        for rid in stopped:
            controls[rid].stop()
        self.controls = controls
        threading.Thread(target=self._run, args=(unit, controls), daemon=True).start()

    def _emit(self, run_id: str, ev) -> None:
        with self.lock:
            self.events.append((run_id, ev))

    def _run(self, unit, controls) -> None:
        import torch
        from kdengine.run.units import train_unit
        torch.set_num_threads(1)
        train_unit(unit, controls, self._emit)

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
        self._busy: dict[str, Any] = {}            # unit id -> the worker training it
        self._idle: list[Any] = []                 # workers waiting for a unit
        self._runs: dict[str, str] = {}            # run id -> unit id
        self._lock = threading.Lock()
        self._closed = False
        # A lost worker is not restarted by Ray: the engine decides what its runs do next.
        self._remote = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(_Worker)
        self._poller = threading.Thread(target=self._poll_loop, name="kd-ray-poll", daemon=True)
        self._poller.start()

    def start(self, unit, controls) -> None:
        from kdengine.core.paths import data_root
        paused = [rid for rid, c in controls.items() if c.paused]
        stopped = [rid for rid, c in controls.items() if c.stopped]
        with self._lock:
            worker = self._idle.pop() if self._idle else self._remote.remote(str(data_root()))
            self._busy[unit.unit_id] = worker
            self._runs.update({t.run_id: unit.unit_id for t in unit.runs})
        worker.start.remote(unit, paused, stopped)

    def command(self, run_id: str, verb: str) -> None:
        worker = self._busy.get(self._runs.get(run_id, ""))
        if worker is not None:
            worker.command.remote(run_id, verb)

    def close(self, wait: bool = True) -> None:
        """Stop every run (waiting up to 30 s for their last events with ``wait``), then end the
        poll thread before returning: nothing may touch Ray once its owner shuts it down."""
        import ray
        self._closed = True
        for rid in list(self._runs):
            self.command(rid, "stop")
        if wait:
            end = time.monotonic() + 30
            while self._busy and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        with self._lock:
            workers = list(self._busy.values()) + self._idle
            self._busy, self._idle = {}, []
            self._runs.clear()
        self._poller.join(timeout=10)
        for worker in workers:
            ray.kill(worker)

    def _poll_loop(self) -> None:
        """One poll in flight per busy worker; a worker still waiting for a CPU (or on a slow
        node) holds up no one else's events."""
        import ray
        from kdengine.core.events import Ended
        polls: dict[str, Any] = {}              # unit id -> its worker's poll in flight
        counted = 0.0
        while not (self._closed and not self._busy):   # close() empties _busy last
            if time.monotonic() - counted > 2.0:
                self._count_cpus()
                counted = time.monotonic()
            with self._lock:
                busy = dict(self._busy)
            for uid, worker in busy.items():
                if uid not in polls:           # not setdefault: a poll drains the buffer
                    polls[uid] = worker.poll.remote()
            for uid in [u for u in polls if u not in busy]:
                del polls[uid]
            if not polls:
                time.sleep(POLL_SECONDS)
                continue
            ready, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=POLL_SECONDS)
            for uid in [u for u, ref in polls.items() if ref in ready]:
                ref = polls.pop(uid)
                try:
                    events = ray.get(ref)
                except Exception as e:   # the worker or its node died
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
                self._free_if_done(uid, busy[uid])
            time.sleep(POLL_SECONDS / 4)

    def _free_if_done(self, uid: str, worker) -> None:
        """Every run of the unit has ended: its worker waits for the next unit, unless the cluster
        has fewer CPUs than workers now (a node left): then it goes, so that a worker started
        since, still waiting for a CPU, gets this one."""
        import ray
        with self._lock:
            if uid in self._runs.values() or self._busy.get(uid) is not worker:
                return
            del self._busy[uid]
            keep = not self._closed and len(self._busy) + len(self._idle) < self.slots
            if keep:
                self._idle.append(worker)
        if not keep:
            ray.kill(worker)

    def _count_cpus(self) -> None:
        """Slots follow the cluster: a node that joins adds its CPUs, one that leaves takes them."""
        import ray
        try:
            self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        except Exception:       # the cluster is not answering now: keep the last count
            pass

    def _forget(self, uid: str) -> None:
        """A unit's worker died. The idle workers may have been on the same node: drop them too
        (new ones start where Ray finds room), so no run is sent to a dead one."""
        import ray
        with self._lock:
            self._busy.pop(uid, None)
            for rid in [r for r, u in self._runs.items() if u == uid]:
                del self._runs[rid]
            idle, self._idle = self._idle, []
        for worker in idle:
            ray.kill(worker)
