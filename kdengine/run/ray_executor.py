"""The Ray executor: units of work (a run, or a group of stacked runs) trained by worker actors on a
Ray cluster.

Set ``KD_RAY_ADDRESS`` (``auto``, ``ray://head:10001``, or ``local`` for a Ray instance on this
machine) and the engine sends every unit to the cluster: Lab runs, lessons, sweep cells, search
trials, chain links alike, through the same fair queue. A worker actor asks for one CPU and is a
:class:`~kdengine.run.executors.UnitHost`, as a worker process is: it trains up to ``per_worker``
units at once, taking turns in time slices, so that every student of a class sees points within
seconds instead of waiting for a free CPU. It stays for the next unit, so a class's runs do not each
pay for a new process that imports torch. Up to one worker per CPU of the cluster is started, where
Ray finds room. The executor polls the workers' buffered events a few times a second and hands them
to the engine; the store, and every checkpoint (an event like any other), stay on this machine, so
nodes need no shared disk. A worker that dies with its node is reported lost, and the engine
continues its runs from their last checkpoints on the nodes left.
Needs ``pip install -r requirements-cluster.txt``.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from typing import Any

from kdengine.run.executors import OnEvent, OnLost

POLL_SECONDS = 0.2


class _Worker:
    """Lives on a Ray node: a unit host whose events wait in a buffer for ``poll``."""

    def __init__(self, runs_dir: str | None):
        import tempfile
        if not (runs_dir and os.path.isdir(runs_dir)):   # a node with a disk of its own: cached
            runs_dir = os.path.join(tempfile.gettempdir(), "kd_runs")   # teachers and data here
        os.environ["KD_RUNS_DIR"] = runs_dir
        import torch
        torch.set_num_threads(1)
        from kdengine.run.executors import UnitHost, prewarm
        prewarm()
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.host = UnitHost(self._emit)

    def start(self, unit, paused: list[str], stopped: list[str]) -> None:
        self.host.start(unit, paused, stopped)

    def _emit(self, run_id: str, ev) -> None:
        with self.lock:
            self.events.append((run_id, ev))

    def ping(self) -> bool:
        """Answers once the worker has started and warmed up."""
        return True

    def poll(self) -> list:
        """The events since the last poll."""
        with self.lock:
            out, self.events = self.events, []
        return out

    def command(self, run_id: str, verb: str) -> None:
        self.host.command(run_id, verb)


class RayExecutor:
    """An executor whose slots are the cluster's CPUs times the units each worker time-slices; the
    engine treats it like a worker."""

    kind = "ray"

    def __init__(self, index: int, address: str, per_worker: int, on_event: OnEvent,
                 on_lost: OnLost):
        import ray
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.index, self.per_worker = index, max(1, per_worker)
        self.cpus = 1
        self._count_cpus()
        self.active: set[str] = set()
        self.ready = threading.Event()          # set once the first workers have warmed up
        self._on_event, self._on_lost = on_event, on_lost
        self._workers: dict[int, Any] = {}          # worker number -> its actor
        self._units: dict[str, int] = {}            # unit id -> the worker training it
        self._runs: dict[str, str] = {}             # run id -> unit id
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        # A lost worker is not restarted by Ray: the engine decides what its runs do next.
        self._remote = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(_Worker)
        # a worker per CPU now, as a server starts its worker processes: a class pressing Train
        # does not wait for actors to start and import torch
        with self._lock:
            first = [self._workers[self._new_worker()] for _ in range(self.cpus)]
        threading.Thread(target=self._warm, args=(first,), name="kd-ray-warm", daemon=True).start()
        self._poller = threading.Thread(target=self._poll_loop, name="kd-ray-poll", daemon=True)
        self._poller.start()

    def _new_worker(self) -> int:
        """Under the lock: start a worker actor (Ray places it where a CPU is free)."""
        from kdengine.core.paths import data_root
        n = next(self._numbers)
        self._workers[n] = self._remote.remote(str(data_root()))
        return n

    def _warm(self, workers: list) -> None:
        import ray
        try:
            ray.wait([w.ping.remote() for w in workers], num_returns=len(workers), timeout=300)
        except Exception:       # a worker that cannot start shows when a unit is sent to it
            pass
        self.ready.set()

    @property
    def slots(self) -> int:
        return self.cpus * self.per_worker

    def start(self, unit, controls) -> None:
        paused = [rid for rid, c in controls.items() if c.paused]
        stopped = [rid for rid, c in controls.items() if c.stopped]
        with self._lock:
            n = self._pick_worker()
            self._units[unit.unit_id] = n
            self._runs.update({t.run_id: unit.unit_id for t in unit.runs})
            worker = self._workers[n]
        worker.start.remote(unit, paused, stopped)

    def _pick_worker(self) -> int:
        """Under the lock: an idle worker; else a new one while there are fewer than CPUs; else
        the least busy one (its units take turns)."""
        load = {n: 0 for n in self._workers}
        for n in self._units.values():
            load[n] += 1
        idle = [n for n, k in load.items() if k == 0]
        if idle:
            return idle[0]
        if len(self._workers) < self.cpus or not self._workers:
            return self._new_worker()
        return min(load, key=load.__getitem__)

    def command(self, run_id: str, verb: str) -> None:
        with self._lock:
            worker = self._workers.get(self._units.get(self._runs.get(run_id, ""), -1))
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
            while self._units and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        with self._lock:
            workers = list(self._workers.values())
            self._workers, self._units = {}, {}
            self._runs.clear()
        self._poller.join(timeout=10)
        for worker in workers:
            ray.kill(worker)

    def _poll_loop(self) -> None:
        """One poll in flight per busy worker; a worker still waiting for a CPU (or on a slow
        node) holds up no one else's events."""
        import ray
        polls: dict[int, Any] = {}              # worker -> its poll in flight
        counted = 0.0
        while not (self._closed and not self._units):   # close() empties _units last
            if time.monotonic() - counted > 2.0:
                self._count_cpus()
                self._trim()
                counted = time.monotonic()
            with self._lock:
                busy = {n: self._workers[n] for n in set(self._units.values())}
            for n, worker in busy.items():
                if n not in polls:           # not setdefault: a poll drains the buffer
                    polls[n] = worker.poll.remote()
            for n in [m for m in polls if m not in busy]:
                del polls[n]
            if not polls:
                time.sleep(POLL_SECONDS)
                continue
            ready, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=POLL_SECONDS)
            for n in [m for m, ref in polls.items() if ref in ready]:
                ref = polls.pop(n)
                try:
                    events = ray.get(ref)
                except Exception as e:   # the worker or its node died
                    lost = self._forget(n)
                    self._on_lost(self, lost, f"Ray lost its worker: {type(e).__name__}")
                    continue
                self._deliver(events)
            time.sleep(POLL_SECONDS / 4)

    def _deliver(self, events: list) -> None:
        """Hand the events to the engine. A run's end frees its part of the worker first, so that
        the unit the engine starts next (from inside ``on_event``) can have it."""
        from kdengine.core.events import Ended
        for run_id, ev in events:
            if isinstance(ev, Ended):
                with self._lock:
                    uid = self._runs.pop(run_id, None)
                if uid is not None:
                    self._free_if_done(uid)
            try:
                self._on_event(run_id, ev)
            except Exception:
                traceback.print_exc()

    def _free_if_done(self, uid: str) -> None:
        """Every run of the unit has ended: its worker is free for it."""
        with self._lock:
            if uid in self._runs.values() or uid not in self._units:
                return
            del self._units[uid]
        self._trim()

    def _trim(self) -> None:
        """More workers than CPUs (a node left, or the engine is closing): idle workers go, so that
        a worker started since, still waiting for a CPU, gets theirs."""
        import ray
        with self._lock:
            idle = [n for n in self._workers if n not in self._units.values()]
            extra = len(idle) if self._closed else len(self._workers) - self.cpus
            dropped = [self._workers.pop(n) for n in idle[:max(0, extra)]]
        for worker in dropped:
            ray.kill(worker)

    def _count_cpus(self) -> None:
        """Slots follow the cluster: a node that joins adds its CPUs, one that leaves takes them."""
        import ray
        try:
            self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        except Exception:       # the cluster is not answering now: keep the last count
            pass

    def _forget(self, n: int) -> list[str]:
        """Worker ``n`` died: the units it trained (returned) are lost. The idle workers may have
        been on the same node: drop them too (new ones start where Ray finds room), so no run is
        sent to a dead one."""
        import ray
        with self._lock:
            self._workers.pop(n, None)
            lost = [u for u, m in self._units.items() if m == n]
            for u in lost:
                del self._units[u]
            for rid in [r for r, u in self._runs.items() if u in lost]:
                del self._runs[rid]
            idle = [m for m in self._workers if m not in self._units.values()]
            dropped = [self._workers.pop(m) for m in idle]
        for worker in dropped:
            ray.kill(worker)
        return lost
