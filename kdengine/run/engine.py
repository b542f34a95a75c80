"""Background run manager: a fair queue, executors (threads or worker processes), pause / resume /
stop, live snapshots.

Callers (a web page, the CLI, a test) ``submit`` a config and get a run id; an executor
(:mod:`kdengine.run.workers`) runs the trainer and its events are folded into a locked
:class:`RunState`. ``snapshot(run_id)`` returns a plain
copy that any thread may read (the web page polls it about once a second). Runs carry an ``owner``
so two browser sessions sharing one engine never see each other's runs mixed up.

With ``batch_window_s``, runs that can train as stacked students (:mod:`kdengine.run.cohort`) wait
up to that long for others of the same key (same data, teacher, student and seed, whoever submitted
them); two or more become one cohort: one queue entry and one executor slot, trained in one pass,
each member still an ordinary run to its owner. The windows and cohorts are
:mod:`kdengine.run.batching`'s; the engine times the windows and starts what they queue.
"""
from __future__ import annotations

import atexit
import copy
import os
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from typing import Any, Callable

from kdengine.core.config import RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.core.store import ACTIVE, Store
from kdengine.run.batching import Batcher, Cohort, window_key
from kdengine.run.cohort import CohortControl, Member
from kdengine.run.monitors import standard_monitors
from kdengine.run.scheduler import FairQueue, start_eta
from kdengine.run.slicing import SlicedControl
from kdengine.run.trainer import Control, Emit, Trainer, versions
from kdengine.run.workers import ProcessExecutor, ThreadExecutor, execute, run_cohort

Event = dict


class RunState:
    """Everything the UI shows about one run. Mutated only under ``lock``."""

    def __init__(self, run_id: str, config: dict, owner: str, name: str, parent: str | None = None):
        self.lock = threading.Lock()
        self.run_id, self.config, self.owner, self.name = run_id, config, owner, name
        self.parent = parent        # the sweep / experiment that asked for it
        self.status = "queued"
        self.phase, self.phase_message, self.phase_progress = "queued", "waiting for a worker", 0.0
        self.step, self.epoch, self.progress, self.eta_s = 0, 0.0, 0.0, None
        self.error: str | None = None
        self.traceback: str | None = None
        self.notices: list[str] = []
        self.series: dict[str, list[tuple[int, float, float]]] = {}
        self.latest: dict[str, float] = {}
        self.artifacts: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.created = time.time()
        self.version = 0            # bumps on every change: a page redraws only when it moved

    def apply(self, ev: Event) -> None:
        with self.lock:
            self.version += 1
            kind = ev["type"]
            if kind == "metrics":
                step, epoch = ev["step"], ev["epoch"]
                for k, v in ev["values"].items():
                    self.series.setdefault(k, []).append((step, epoch, v))
                    self.latest[k] = v
                self.step = max(self.step, step)
                self.epoch = max(self.epoch, epoch)
                if "progress" in ev["values"]:
                    self.progress = ev["values"]["progress"]
                    self.eta_s = ev["values"].get("eta_s")
            elif kind == "phase":
                self.phase, self.phase_message = ev["phase"], ev["message"]
                self.phase_progress = ev.get("progress", 0.0)
            elif kind == "notice":
                self.notices.append(ev["message"])
            elif kind == "artifacts":
                self.artifacts.update(ev["data"])
                self.artifacts["_step"] = ev["step"]
            elif kind == "status":
                self.status = ev["status"]
                if ev.get("error"):
                    self.error = ev["error"]
                    self.traceback = ev.get("traceback")
                if ev["status"] == "done":
                    self.progress, self.eta_s = 1.0, 0.0
            elif kind == "summary":
                self.summary.update(ev["summary"])

    def restore(self, series: dict[str, list], notices: list[str]) -> None:
        """Start from a run's earlier points and notices (it continues from a checkpoint)."""
        with self.lock:
            self.series = {k: list(v) for k, v in series.items()}
            self.latest = {k: v[-1][2] for k, v in series.items() if v}
            self.notices = list(notices)

    def snapshot(self, series: bool = True) -> dict:
        """Plain data a page may keep; ``series=False`` leaves out the metric series (the costly
        part to copy, and what a list of runs does not show)."""
        with self.lock:
            return {
                "run_id": self.run_id, "owner": self.owner, "name": self.name,
                "parent": self.parent, "config": copy.deepcopy(self.config), "status": self.status, "phase": self.phase,
                "phase_message": self.phase_message, "phase_progress": self.phase_progress,
                "step": self.step, "epoch": self.epoch, "progress": self.progress,
                "eta_s": self.eta_s, "error": self.error, "traceback": self.traceback,
                "notices": list(self.notices), "latest": dict(self.latest),
                **({"series": {k: list(v) for k, v in self.series.items()}} if series else {}),
                "artifacts": dict(self.artifacts), "summary": dict(self.summary),
                "created": self.created, "version": self.version,
            }


class _Job:
    def __init__(self, state: RunState, cfg: RunConfig, resume: bool, control: Control,
                 checkpoint_path):
        self.state, self.cfg, self.resume = state, cfg, resume
        self.control = control
        self.checkpoint_path = checkpoint_path
        self.subscribers: list[Callable[[Event], None]] = []
        self.executor: Any = None          # where it runs, once admitted
        self.recorder: _Recorder | None = None
        self.started: float | None = None
        self.gathering: str | None = None     # the stack key whose batch window it waits in
        self.cohort: Cohort | None = None     # the cohort it is queued or training in

    @property
    def unit_id(self) -> str:
        return self.state.run_id


class _Recorder:
    """Folds one run's events into its live state and the store (metrics batched, see FLUSH)."""

    def __init__(self, engine: "Engine", job: _Job):
        self.engine, self.job = engine, job
        self.pending: list[tuple[int, float, dict]] = []
        self.last_flush = time.monotonic()

    def flush(self) -> None:
        rid = self.job.state.run_id
        for step, epoch, values in self.pending:
            self.engine.store.add_metrics(rid, step, epoch, values)
        self.pending.clear()
        self.last_flush = time.monotonic()

    def emit(self, ev: Event) -> None:
        self.engine._publish(self.job, ev)
        if ev["type"] == "metrics":
            self.pending.append((ev["step"], ev["epoch"], ev["values"]))
            if "test_acc" in ev["values"] or \
                    time.monotonic() - self.last_flush > self.engine.FLUSH_SECONDS:
                self.flush()
        elif ev["type"] == "artifacts":
            for name, data in ev["data"].items():
                self.engine.store.add_artifact(self.job.state.run_id, ev["step"], name, data)


def default_workers() -> int:
    env = os.environ.get("KD_MAX_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    import torch
    return 2 if torch.cuda.is_available() else 1


class Engine:
    """Thread-safe run manager. One per process is enough (the web app keeps it in cache_resource).

    ``max_workers`` executors each host up to ``slots`` runs; with ``processes`` the executors are
    worker processes (parallel despite the GIL), otherwise threads of this process. With one slot
    (the default) an executor trains one run at a time and the rest wait in the queue; with more,
    its runs take turns in short time slices, and an owner with nothing running is admitted even
    when the slots are full (up to ``4 x`` the slots), so a newcomer never waits behind a sweep.
    Queued runs start round-robin by owner (:mod:`kdengine.run.scheduler`)."""

    # Metrics reach SQLite at most this often (plus at every epoch end and at the run's end), so a
    # killed process loses at most this much; KD_FLUSH_SECONDS=0 flushes every point (tests).
    FLUSH_SECONDS = float(os.environ.get("KD_FLUSH_SECONDS", "1.0"))
    KEEP_FINISHED = 200          # finished runs kept in memory; older ones are read from the store
    OVERBOOK = 4                 # time-sliced executors admit newcomers up to this x their slots

    def __init__(self, store: Store | None = None, max_workers: int | None = None,
                 slots: int = 1, processes: bool = False, ray_address: str | None = None,
                 batch_window_s: float = 0.0):
        self.store = store or Store()
        self.batch_window_s = 0.0 if ray_address else max(0.0, batch_window_s)
        self.ray_address = ray_address      # runs go to a Ray cluster (kdengine.run.ray_executor)
        self.max_workers = 1 if ray_address else (max_workers or default_workers())
        self.slots = max(1, slots)
        self.processes = processes
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._lock = threading.Lock()
        self._queue = FairQueue()
        self._batches = Batcher(self._queue)   # batch windows and cohorts
        self._durations: list[float] = []      # recent run times, for queued runs' ETA
        self._closed = False
        self._executors = [self._new_executor(i) for i in range(self.max_workers)]
        # At interpreter exit the worker processes are killed: that is no death to recover from.
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref()._mark_closed())

    def _mark_closed(self) -> None:
        self._closed = True

    def _new_executor(self, index: int):
        if self.ray_address:
            from kdengine.run.ray_executor import RayExecutor
            ex = RayExecutor(index, self.ray_address, self._on_child_event, self._on_child_death)
            self.slots = ex.slots
            return ex
        if self.processes:
            return ProcessExecutor(index, self.slots, self._on_child_event, self._on_child_death)
        return ThreadExecutor(index, self.slots, self._run)

    # -- public API ------------------------------------------------------------------------------
    def submit(self, cfg: RunConfig | dict, owner: str = "", name: str = "",
               run_id: str | None = None, parent: str | None = None,
               subscriber: Callable[[Event], None] | None = None) -> str:
        """Validate and queue a run; returns its id. Raises ConfigError for a bad config.

        ``parent`` tags the run with the sweep / experiment that asked for it. ``subscriber``: as
        :meth:`subscribe`, attached before the run is queued, so it sees every event (a subscribe
        after submit may miss the first ones of a run that starts at once)."""
        # The one validation of a run (a config validated before, e.g. by the Lab, and unchanged
        # since is not re-checked); the trainer trusts it.
        cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg.copy().validated()
        check_resources(cfg)
        name = name or cfg.name
        resume = run_id is not None
        if run_id is None:
            run_id = self.store.create_run(cfg.to_dict(), cfg.hash, owner=owner, name=name,
                                           versions=versions(), parent=parent)
        else:
            self.store.set_status(run_id, "queued")
        if resume:
            parent = (self.store.get_run(run_id) or {}).get("parent")
        state = RunState(run_id, cfg.to_dict(), owner, name, parent)
        left = self._jobs.get(run_id) if resume else None
        if left is not None and left.state.status == "paused":
            # a member that left its cohort paused, continuing alone: its page keeps the chart up to
            # the checkpoint (the store's, already cut there) and its subscribers
            state.restore(self.store.series(run_id), left.state.notices)
        sliced = self.slots > 1 and not (self.processes or self.ray_address)
        control = SlicedControl(owner) if sliced else Control()
        job = _Job(state, cfg, resume, control, self.store.checkpoint_path(run_id))
        if left is not None and left.state.status == "paused":
            job.subscribers = left.subscribers
        if subscriber is not None:
            job.subscribers.append(subscriber)
        key = window_key(cfg) if self.batch_window_s and not resume else ""
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is shut down")
            self._jobs[run_id] = job
            self._trim()
            window = None
            if key:
                window = self._batches.gather(job, key)
            else:
                self._queue.push(run_id, owner)
        if window is not None:         # a new batch window: it closes by itself, never blocking
            t = threading.Timer(self.batch_window_s, self._close_window, (key, window))
            t.daemon = True
            t.start()
        self._dispatch()
        return run_id

    def resume_run(self, run_id: str) -> str:
        """Continue an interrupted or stopped run from its last checkpoint (same run id)."""
        row = self.store.get_run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id}")
        if row["status"] in ACTIVE and run_id in self._jobs:
            raise ValueError(f"run {run_id} is {row['status']}")
        return self._resubmit(row)

    def _resubmit(self, row: dict) -> str:
        """Queue a stored run again, to continue from its last checkpoint (metrics after it go)."""
        run_id = row["id"]
        cfg = RunConfig.from_dict(row["config"])
        ck = self.store.checkpoint_path(run_id)
        if ck.exists():
            from kdengine.core.checkpoints import safe_load
            step = int(safe_load(ck).get("step", 0))
            self.store.truncate_metrics(run_id, step)
        return self.submit(cfg, owner=row["owner"], name=row["name"], run_id=run_id)

    def pause(self, run_id: str) -> None:
        job = self._job(run_id)
        if job.state.status in ("queued", "running"):
            job.control.pause()
            with self._lock:       # a paused run waits alone: it would leave a cohort at once
                if self._batches.withdraw(job):
                    self._queue.push(run_id, job.state.owner)
            self._command(job, "pause")

    def resume(self, run_id: str) -> None:
        job = self._job(run_id)
        if job.state.status == "paused" and job.executor is None:
            # it left its cohort paused: it trains on alone from its last checkpoint
            self._resubmit(self.store.get_run(run_id))
            return
        job.control.resume()
        self._command(job, "resume")
        if job.state.status == "paused":
            self._set_status(job, "running")

    def stop(self, run_id: str) -> None:
        job = self._job(run_id)
        job.control.stop()
        with self._lock:
            was_queued = self._batches.withdraw(job) or self._queue.remove(run_id)
        if was_queued or (job.state.status == "paused" and job.executor is None):   # or it left
            # its cohort paused: nothing trains it, its checkpoint is on disk
            self._set_status(job, "stopped")
        else:
            self._command(job, "stop")

    def status(self, run_id: str) -> str:
        job = self._jobs.get(run_id)
        if job is not None:
            return job.state.status
        row = self.store.get_run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id}")
        return row["status"]

    def snapshot(self, run_id: str) -> dict:
        """The run's live state as plain data; for runs not in memory, rebuilt from the store.
        A queued run also gets ``queue_position`` (0 = next to start) and ``queue_eta_s``
        (seconds until it starts; None while nothing has been timed)."""
        job = self._jobs.get(run_id)
        if job is None:
            return snapshot_from_store(self.store, run_id)
        snap = job.state.snapshot()
        snap["queue_position"], snap["queue_eta_s"] = self.queue_info(run_id)
        return snap

    def queue_info(self, run_id: str) -> tuple[int | None, float | None]:
        """(position, seconds until it starts) of a queued run; (None, None) for any other."""
        with self._lock:
            job = self._jobs.get(run_id)
            unit = job.cohort.unit_id if job is not None and job.cohort is not None else run_id
            gathering = job is not None and job.gathering is not None
            if unit not in self._queue and not gathering:
                return None, None
            order = self._queue.order(self._active_by_owner())
            # one ETA per unit of work training now (a cohort's members share theirs)
            remaining = [self._unit_jobs(r)[0].state.eta_s for ex in self._executors
                         for r in ex.active if self._unit_jobs(r)]
            durations = list(self._durations)
        pos = len(order) if gathering else order.index(unit)   # a window closes behind the queue
        return pos, start_eta(pos, remaining, self.max_workers * self.slots, durations)

    def runs(self, owner: str | None = None) -> list[dict]:
        """Light snapshots (no series) of the runs in memory, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        out = []
        for j in reversed(jobs):
            if owner is not None and j.state.owner != owner:
                continue
            out.append(j.state.snapshot(series=False))
        return out

    def active_owners(self) -> int:
        """How many owners (sessions) have a run queued, running or paused: the live views the
        pages should plan for, known as soon as a class presses Train, before their pages poll."""
        with self._lock:
            return len({j.state.owner for j in self._jobs.values() if j.state.status in ACTIVE})

    def queued(self) -> list[str]:
        """Queued run ids, in the order they would start."""
        with self._lock:
            order = self._queue.order(self._active_by_owner())
            return [j.state.run_id for unit in order for j in self._unit_jobs(unit)] + \
                self._batches.waiting()

    def subscribe(self, run_id: str, callback: Callable[[Event], None]) -> Callable[[], None]:
        job = self._job(run_id)
        job.subscribers.append(callback)
        return lambda: job.subscribers.remove(callback) if callback in job.subscribers else None

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.05) -> str:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if st not in ACTIVE:
                return st
            if end is not None and time.monotonic() > end:
                return st
            time.sleep(poll)

    def wait_for(self, run_id: str, status: str, timeout: float = 30, poll: float = 0.02) -> bool:
        """Wait until a run reaches ``status``; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.status(run_id) == status:
                return True
            time.sleep(poll)
        return False

    def wait_ready(self, timeout: float = 120) -> bool:
        """Wait until every worker has imported the training stack (True) or ``timeout`` passed."""
        end = time.monotonic() + timeout
        return all(ex.ready.wait(max(0.0, end - time.monotonic())) for ex in list(self._executors))

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for j in jobs:
            if j.state.status in ACTIVE:
                j.control.stop()
                self._command(j, "stop")
        for ex in self._executors:
            ex.close(wait)

    # -- scheduling ------------------------------------------------------------------------------
    def _unit_jobs(self, unit_id: str) -> list[_Job]:
        """The runs of a unit of work: a cohort's members still in it, or the one run."""
        cohort = self._batches.cohort(unit_id)
        if cohort is not None:
            return cohort.members()
        job = self._jobs.get(unit_id)
        return [job] if job is not None else []

    def _active_by_owner(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ex in self._executors:
            for r in ex.active:
                for job in self._unit_jobs(r):
                    counts[job.state.owner] = counts.get(job.state.owner, 0) + 1
        return counts

    def _close_window(self, key: str, window: list[_Job]) -> None:
        """A batch window's wait is over: what it queued may start."""
        with self._lock:
            self._batches.close(key, window)
        self._dispatch()

    def _admit(self) -> list[tuple[_Job, Any]]:
        """Under the lock: take queued runs for free slots (and, when time-slicing, newcomers)."""
        started = []
        cap = self.OVERBOOK * self.slots * len(self._executors)
        while len(self._queue) and not self._closed:
            active = self._active_by_owner()
            free = [e for e in self._executors if len(e.active) < e.slots]
            if free:
                ex = min(free, key=lambda e: len(e.active))
                rid = self._queue.pop(active)
            elif self.slots > 1 and not self.ray_address and sum(active.values()) < cap:
                ex = min(self._executors, key=lambda e: len(e.active))
                rid = self._queue.pop(active, only_idle_owners=True)
            else:
                rid = None
            if rid is None:
                break
            unit = self._batches.starting(rid) or self._jobs[rid]
            rid = unit.unit_id
            ex.active.add(rid)
            unit.executor, unit.started = ex, time.monotonic()
            for job in self._unit_jobs(rid):
                job.executor, job.started = ex, unit.started
                job.recorder = _Recorder(self, job)
            if isinstance(unit, Cohort):
                unit.control = CohortControl(unit.unit_id, {j.state.run_id: j.control
                                                            for j in unit.members()})
            started.append((unit, ex))
        return started

    def _dispatch(self) -> None:
        with self._lock:
            started = self._admit()
        for unit, ex in started:
            cohort = isinstance(unit, Cohort)
            jobs = unit.members() if cohort else [unit]
            try:
                for job in jobs:
                    self._set_status(job, "running")
                ex.start_cohort(unit) if cohort else ex.start(unit)
            except Exception as e:   # e.g. the store failing: the run fails, the engine serves on
                for job in jobs:
                    self._fail_quietly(job, e)
                    self._release(job)

    def _release(self, job: _Job) -> None:
        """The run's part of its slot is free again: when its unit (the run, or its cohort) has
        ended, record its time and start what waits."""
        with self._lock:
            ex, cohort = job.executor, job.cohort
            job.executor, job.cohort = None, None
            unit = cohort or job
            if cohort is not None:
                cohort.live.discard(job.state.run_id)
            if ex is not None and (cohort is None or not cohort.live):
                ex.active.discard(unit.unit_id)
                self._batches.ended(unit.unit_id)
                if unit.started is not None and job.state.status == "done":
                    self._durations = (self._durations + [time.monotonic() - unit.started])[-50:]
        self._dispatch()

    def _command(self, job: _Job, verb: str) -> None:
        if job.executor is not None:
            job.executor.command(job.state.run_id, verb)

    # -- internals -------------------------------------------------------------------------------
    def _job(self, run_id: str) -> _Job:
        job = self._jobs.get(run_id)
        if job is None:
            raise KeyError(f"run {run_id} is not managed by this engine")
        return job

    def _trim(self) -> None:
        finished = [r for r, j in self._jobs.items() if j.state.status not in ACTIVE]
        for r in finished[: max(0, len(finished) - self.KEEP_FINISHED)]:
            del self._jobs[r]

    def _publish(self, job: _Job, ev: Event) -> None:
        job.state.apply(ev)
        for cb in list(job.subscribers):
            try:
                cb(ev)
            except Exception:  # a broken subscriber must not kill the run
                pass

    def _set_status(self, job: _Job, status: str, error: str | None = None, tb: str | None = None):
        self.store.set_status(job.state.run_id, status, error)
        self._publish(job, {"type": "status", "status": status, "error": error, "traceback": tb})

    def _fail_quietly(self, job: _Job, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tb = traceback.format_exc()
        try:
            self.store.set_status(job.state.run_id, "failed", msg)
        except Exception:
            pass   # the store is what failed; the in-memory state still tells the page
        self._publish(job, {"type": "status", "status": "failed", "error": msg, "traceback": tb})

    def _finish(self, job: _Job, outcome: dict) -> None:
        """Record how a run ended (the same for a thread and a worker process)."""
        try:
            if job.state.status not in ACTIVE:      # already failed here (its recording broke)
                return
            job.recorder.flush()
            status = outcome["status"]
            if status in ("done", "stopped"):
                summary = outcome.get("summary") or {}
                self.store.set_summary(job.state.run_id, summary)
                self._publish(job, {"type": "summary", "summary": summary})
                self._set_status(job, status, None if status == "done" else "stopped by the user")
            elif status == "paused":        # it left its cohort; resume() continues it alone
                self._set_status(job, "paused")
            else:
                self._set_status(job, "failed", outcome.get("error"), outcome.get("traceback"))
        except Exception as e:  # a fault while recording a fault (e.g. the store failing):
            self._fail_quietly(job, e)   # the run is marked failed, the engine serves on

    def _run(self, job: "_Job | Cohort") -> None:
        """Train ``job`` in this thread (a thread executor's runner)."""
        if isinstance(job, Cohort):
            return self._run_cohort(job)
        rid = job.state.run_id
        job.control.on_pause = lambda paused: self._set_status(job, "paused" if paused else "running")
        try:
            outcome = execute(lambda: Trainer(job.cfg, job.recorder.emit, job.control,
                                              self.store.checkpoint_path(rid), resume=job.resume,
                                              monitors=standard_monitors()), job.control)
            self._finish(job, outcome)
        finally:
            self._release(job)

    def _run_cohort(self, cohort: Cohort) -> None:
        def ender(job):
            def end(outcome: dict) -> None:
                self._finish(job, outcome)
                self._release(job)
            return end
        run_cohort([Member(j.state.run_id, j.cfg, j.recorder.emit, j.control, j.checkpoint_path,
                           ender(j)) for j in cohort.members()], cohort.control,
                   standard_monitors())

    # -- worker processes ------------------------------------------------------------------------
    def _on_child_event(self, run_id: str, ev: Event) -> None:
        job = self._jobs.get(run_id)
        if job is None or job.recorder is None:
            return
        if ev["type"] == "_end":
            self._finish(job, ev)
            self._release(job)
            return
        if job.state.status not in ACTIVE:
            return                           # recording already failed; the child is stopping
        try:
            if ev["type"] == "status":
                self._set_status(job, ev["status"])
            else:
                job.recorder.emit(ev)
        except Exception as e:   # e.g. the store failing: fail the run, tell its worker to stop
            self._fail_quietly(job, e)
            job.control.stop()
            self._command(job, "stop")

    def _on_child_death(self, ex: ProcessExecutor, why: str) -> None:
        """A worker process died: its runs fail (resumable from a checkpoint), a new one starts."""
        with self._lock:
            lost = [j for r in ex.active for j in self._unit_jobs(r)]
            for r in ex.active:
                self._batches.ended(r)
            for j in lost:
                j.executor, j.cohort = None, None
            ex.active.clear()
            if not self._closed and ex in self._executors:     # a dead process: start another
                self._executors[self._executors.index(ex)] = self._new_executor(ex.index)
        for job in lost:
            if job.state.status not in ACTIVE:
                continue
            resumable = job.checkpoint_path.exists()
            msg = (f"the worker process training this run died ({why}); "
                   + ("resume it to continue from its last checkpoint" if resumable
                      else "start it again"))
            try:
                job.recorder.flush()
                self._set_status(job, "failed", msg)
            except Exception as e:
                self._fail_quietly(job, e)
        self._dispatch()


def check_resources(cfg: RunConfig) -> None:
    """Refuse configs that would not fit in memory before they start."""
    from kdengine.run.resources import estimate_bytes, memory_limit
    need, what = estimate_bytes(cfg)
    limit = memory_limit(cfg)
    if need > limit:
        raise ConfigError(what, f"this run needs about {need / 2**30:.2f} GiB, more than the "
                                f"{limit / 2**30:.2f} GiB allowed; most of it comes from {what}, "
                                f"so make that smaller")


def snapshot_from_store(store: Store, run_id: str) -> dict:
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no run {run_id}")
    series = store.series(run_id)
    latest = {k: v[-1][2] for k, v in series.items() if v}
    prog = latest.get("progress", 1.0 if row["status"] == "done" else 0.0)
    arts = {}
    for name in _artifact_names(store, run_id):
        items = store.artifacts(run_id, name)
        if items:
            arts[name] = items[-1][1]
    return {"run_id": run_id, "owner": row["owner"], "name": row["name"],
            "parent": row.get("parent"), "config": row["config"],
            "status": row["status"], "phase": row["status"], "phase_message": "",
            "phase_progress": 1.0, "step": max((v[-1][0] for v in series.values() if v), default=0),
            "epoch": max((v[-1][1] for v in series.values() if v), default=0.0),
            "progress": prog, "eta_s": None, "error": row["error"], "traceback": None,
            "notices": [], "latest": latest, "series": series, "artifacts": arts,
            "summary": row["summary"], "created": row["created"], "version": 0,
            "queue_position": None, "queue_eta_s": None}


def _artifact_names(store: Store, run_id: str) -> list[str]:
    rows = store._tx("SELECT DISTINCT name FROM artifacts WHERE run_id = ?", (run_id,)).fetchall()
    return [r["name"] for r in rows]


def train(cfg: RunConfig, emit: Emit | None = None) -> dict:
    """Run a config in this thread, without the engine's queue and store (tests, notebooks), with
    the same per-epoch monitors an engine run gets."""
    return Trainer(cfg, emit, monitors=standard_monitors()).run()
