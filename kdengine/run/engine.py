"""The engine: every run's one road, from ``submit`` to its last recorded event.

    page / CLI / experiment
       -> Engine.submit(cfg) or Engine.submit_group(cfgs)   validated once, resources checked
       -> fair queue (round-robin by owner; batch windows may gather a cohort)
       -> an executor: threads | worker processes | Ray    (kdengine.run.executors, .ray_executor)
       -> train_unit builds the trainer (kdengine.run.units), solo or a stacked group
       -> events -> one Recorder per run (kdengine.run.recorder): live state, store, checkpoint file
       -> pages read RunSnapshots (kdengine.run.snapshot)

Runs carry an ``owner`` so two browser sessions sharing one engine never see each other's runs mixed
up, and the queue serves owners in turn. A run is changed or removed (stop, pause, resume, delete,
prune) only by its owner or the instructor: each such call takes a ``caller``
(:mod:`kdengine.core.roles`; None is this machine's own code). A student's run follows the class's
lesson lock (:mod:`kdengine.core.class_state`): the engine puts a locked knob back at the
instructor's value, says so in a notice, and tags the run with the lesson. An executor that dies (a killed worker process, a lost Ray
node) takes its runs with it; each continues from its last checkpoint by itself, once, with a
notice. With ``batch_window_s``, runs that can train as stacked students wait up to that long for
others of the same key (same data, teacher, student and seed, whoever submitted them); two or more
become one cohort: one queue entry and one executor slot (:mod:`kdengine.run.cohort_windows`).
"""
from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable

from kdengine.core.checkpoints import read_run_checkpoint
from kdengine.core.class_state import ClassState, apply_locks
from kdengine.core.config import RunConfig, flatten
from kdengine.core.events import Ended, Event, Notice
from kdengine.core.knobs import ConfigError
from kdengine.core.roles import Caller, check_instructor, check_owner
from kdengine.core.store import ACTIVE, Store
from kdengine.run.cohort_windows import CohortWindows, Group, window_key
from kdengine.run.control import Control
from kdengine.run.recorder import Recorder
from kdengine.run.scheduler import FairQueue, start_eta
from kdengine.run.snapshot import RunSnapshot, RunState
from kdengine.run.time_slices import SlicedControl
from kdengine.run.trainer import versions
from kdengine.run.units import RunTicket, Unit, make_trainer

MAX_RECOVERIES = 1       # a run whose executor died continues by itself this many times


class _Job:
    """One run as the engine keeps it: its live state and recorder, its pause / stop, where it is."""

    def __init__(self, state: RunState, cfg: RunConfig, recorder: Recorder, control: Control):
        self.state, self.cfg, self.recorder, self.control = state, cfg, recorder, control
        self.resume = False                   # continue from its checkpoint when it starts
        self.executor: Any = None             # where it runs, once admitted
        self.started: float | None = None
        self.gathering: str | None = None     # the stack key whose batch window it waits in
        self.group: Group | None = None       # the group it is queued or training in
        self.recoveries = 0                   # times it went on after its executor died

    @property
    def unit_id(self) -> str:
        return self.state.run_id


def default_workers() -> int:
    env = os.environ.get("KD_MAX_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    import torch
    return 2 if torch.cuda.is_available() else 1


class Engine:
    """Thread-safe run manager. One per process is enough (the web app keeps it in cache_resource).

    ``max_workers`` executors each host up to ``slots`` units; with ``processes`` the executors are
    worker processes (parallel despite the GIL), with ``ray_address`` one executor sends every unit
    to a Ray cluster (``slots`` per worker actor, one actor per CPU), otherwise they are threads of
    this process. With one slot (the default) a worker trains one unit at a time and the rest wait
    in the queue; with more, its runs take turns in short time slices, and an owner with nothing
    running is admitted even when the slots are full (up to ``OVERBOOK x`` the slots), so a
    newcomer never waits behind a sweep."""

    # Metrics reach SQLite at most this often (plus at every epoch end and at the run's end), so a
    # killed process loses at most this much; KD_FLUSH_SECONDS=0 flushes every point (tests).
    FLUSH_SECONDS = float(os.environ.get("KD_FLUSH_SECONDS", "1.0"))
    KEEP_FINISHED = 200          # finished runs kept in memory; older ones are read from the store
    OVERBOOK = 4                 # time-sliced executors admit newcomers up to this x their slots

    def __init__(self, store: Store | None = None, max_workers: int | None = None,
                 slots: int = 1, processes: bool = False, ray_address: str | None = None,
                 batch_window_s: float = 0.0):
        self.store = store or Store()
        self.classroom = ClassState(self.store.root)      # the lesson lock, kept in the data folder
        self.batch_window_s = max(0.0, batch_window_s)
        self.ray_address = ray_address
        self.max_workers = 1 if ray_address else (max_workers or default_workers())
        self.slots = max(1, slots)
        self.processes = processes
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._lock = threading.Lock()
        self._queue = FairQueue()
        self._windows = CohortWindows(self._queue)
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
            return RayExecutor(index, self.ray_address, self.slots, self._on_event, self._on_lost)
        from kdengine.run.executors import ProcessExecutor, ThreadExecutor
        kind = ProcessExecutor if self.processes else ThreadExecutor
        return kind(index, self.slots, self._on_event, self._on_lost)

    def _new_control(self, owner: str) -> Control:
        sliced = self.slots > 1 and not (self.processes or self.ray_address)
        return SlicedControl(owner) if sliced else Control()

    # -- submitting --------------------------------------------------------------------------------
    def submit(self, cfg: RunConfig | dict, owner: str = "", name: str = "",
               parent: str | None = None,
               subscriber: Callable[[Event], None] | None = None, *,
               caller: Caller | None = None, lesson: str | None = None) -> str:
        """Validate and queue a run; returns its id. Raises ConfigError for a bad config, or for a
        run too big for this machine (naming the knob to make smaller).

        ``parent`` tags the run with the sweep / experiment that asked for it. ``subscriber``: as
        :meth:`subscribe`, attached before the run is queued, so it sees every event. ``caller``:
        who presses Train (a page passes one; a student's run gets the class's lesson lock).
        ``lesson``: the lesson it is started from; a run that keeps the class lock is tagged with
        the lock's lesson unless given one."""
        cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        cfg, lesson, forced = self._class_rules(cfg, caller, lesson)
        cfg = self._checked(cfg)
        job = self._new_job(cfg, owner, name or cfg.name, parent, lesson)
        if forced:
            job.recorder.record(Notice(forced))
        if subscriber is not None:
            job.recorder.subscribers.append(subscriber)
        key = window_key(cfg) if self.batch_window_s else ""
        window = None
        with self._lock:
            self._admit_job(job)
            if key:
                window = self._windows.gather(job, key)
            else:
                self._queue.push(job.state.run_id, owner)
        if window is not None:         # a new batch window: it closes by itself, never blocking
            t = threading.Timer(self.batch_window_s, self._close_window, (key, window))
            t.daemon = True
            t.start()
        self._dispatch()
        return job.state.run_id

    def submit_group(self, cfgs: list[RunConfig | dict], owner: str = "",
                     names: list[str] | None = None, parent: str | None = None) -> list[str]:
        """Queue runs that differ only in the method's per-student knobs (T, the loss weights) as
        one group: stacked students trained in one pass, one queue entry, one executor slot; each
        is still an ordinary run with its own id, metrics and checkpoint. ConfigError when the
        configs cannot stack (a method that trains one student at a time, different students...)."""
        from kdengine.run.stacked import group_key, per_student_knobs, why_not_stacked
        from kdengine.methods import get_method_class
        cfgs = [self._checked(c) for c in cfgs]
        if not cfgs:
            return []
        for cfg in cfgs:
            reason = why_not_stacked(cfg)
            if reason:
                raise ConfigError("method.name", f"these runs cannot train as a group: {reason}")
        if len({group_key(c) for c in cfgs}) > 1:
            knobs = ", ".join(per_student_knobs(get_method_class(cfgs[0].method.name))) or "none"
            raise ConfigError("method.params", f"runs of a group may differ only in {knobs}; "
                                               f"everything else must be the same")
        check_resources(cfgs[0], stacked=len(cfgs))
        names = names or [c.name for c in cfgs]
        jobs = [self._new_job(c, owner, n, parent) for c, n in zip(cfgs, names)]
        with self._lock:
            for job in jobs:
                self._admit_job(job)
            if len(jobs) == 1:
                self._queue.push(jobs[0].state.run_id, owner)
            else:
                self._windows.queue_group(jobs)
        self._dispatch()
        return [j.state.run_id for j in jobs]

    def _class_rules(self, cfg: RunConfig, caller: Caller | None,
                     lesson: str | None) -> tuple[RunConfig, str | None, str]:
        """A page's run under the class lock: a student's locked knobs put back at the lock's values
        (the notice says which), and the lesson tag of a run that keeps the lock."""
        lock = self.classroom.lock() if caller is not None else None
        if lock is None:
            return cfg, lesson, ""
        forced = ""
        if not caller.instructor:
            cfg, changed = apply_locks(cfg, lock.locked)
            if changed:
                forced = ("Your instructor has fixed " + ", ".join(
                    f"{k.rsplit('.', 1)[-1]} = {lock.locked[k]}" for k in changed)
                    + " for this lesson; this run uses those values.")
        flat = flatten(cfg.to_dict())
        if lesson is None and all(flat.get(k, v) == v for k, v in lock.locked.items()):
            lesson = lock.lesson
        return cfg, lesson, forced

    def _checked(self, cfg: RunConfig | dict) -> RunConfig:
        # The one validation of a run (a config validated before and unchanged since is not
        # re-checked); the trainer trusts it.
        cfg = RunConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg.copy().validated()
        check_resources(cfg)
        return cfg

    def _new_job(self, cfg: RunConfig, owner: str, name: str, parent: str | None,
                 lesson: str | None = None) -> _Job:
        run_id = self.store.create_run(cfg.to_dict(), cfg.hash, owner=owner, name=name,
                                       versions=versions(), parent=parent, lesson=lesson)
        state = RunState(run_id, cfg.to_dict(), owner, name, parent, lesson=lesson)
        return _Job(state, cfg, Recorder(self.store, state, self.FLUSH_SECONDS),
                    self._new_control(owner))

    def _admit_job(self, job: _Job) -> None:
        """Under the lock: hold a new job."""
        if self._closed:
            raise RuntimeError("engine is shut down")
        self._jobs[job.state.run_id] = job
        self._trim()

    def resume_run(self, run_id: str, *, caller: Caller | None = None) -> str:
        """Continue an interrupted, stopped, failed or paused run from its last checkpoint (same
        run id; the points after the checkpoint go)."""
        check_owner(caller, self.owner_of(run_id), "continue")
        job = self._jobs.get(run_id)
        if job is not None and job.state.status in ACTIVE and not self._left_group_paused(job):
            raise ValueError(f"run {run_id} is {job.state.status}")
        if job is None:
            row = self.store.get_run(run_id)
            if row is None:
                raise KeyError(f"no run {run_id}")
            if row["status"] in ACTIVE:
                raise ValueError(f"run {run_id} is {row['status']} in another process")
            cfg = RunConfig.from_dict(row["config"])
            state = RunState.from_row(row)
            job = _Job(state, cfg, Recorder(self.store, state, self.FLUSH_SECONDS),
                       self._new_control(row["owner"]))
            with self._lock:
                self._admit_job(job)
        self._requeue(job)
        return run_id

    def _requeue(self, job: _Job, notice: str = "") -> None:
        """Queue a known run again to continue from its checkpoint (from the start without one)."""
        rid = job.state.run_id
        path = self.store.checkpoint_path(rid)
        step = read_run_checkpoint(path).step if path.exists() else 0
        self.store.truncate_metrics(rid, step)
        job.state.restore(self.store.series(rid), job.state.notices)
        job.resume = path.exists()
        job.control = self._new_control(job.state.owner)
        job.executor = job.group = job.gathering = None
        job.recorder.set_status("queued")
        if notice:
            job.recorder.record(Notice(notice))
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is shut down")
            self._queue.push(rid, job.state.owner)
        self._dispatch()

    # -- control -----------------------------------------------------------------------------------
    def pause(self, run_id: str, *, caller: Caller | None = None) -> None:
        job = self._job(run_id)
        check_owner(caller, job.state.owner, "pause")
        if job.state.status in ("queued", "running"):
            job.control.pause()
            with self._lock:       # a paused run waits alone: it would leave a group at once
                if self._windows.withdraw(job):
                    self._queue.push(run_id, job.state.owner)
            self._command(job, "pause")

    def resume(self, run_id: str, *, caller: Caller | None = None) -> None:
        job = self._job(run_id)
        check_owner(caller, job.state.owner, "resume")
        if self._left_group_paused(job):
            self._requeue(job)          # it left its group paused: it trains on alone
            return
        job.control.resume()
        self._command(job, "resume")
        if job.state.status == "paused":
            job.recorder.set_status("running")

    def stop(self, run_id: str, why: str = "stopped by the user", *,
             caller: Caller | None = None) -> None:
        """Stop a run; ``why`` is what its row says (a search's pruner gives its own reason)."""
        job = self._job(run_id)
        check_owner(caller, job.state.owner, "stop")
        job.recorder.stop_reason = why
        job.control.stop()
        with self._lock:
            was_queued = self._windows.withdraw(job) or self._queue.remove(run_id)
        if was_queued or self._left_group_paused(job):     # nothing trains it
            job.recorder.set_status("stopped", why)
        else:
            self._command(job, "stop")

    @staticmethod
    def _left_group_paused(job: _Job) -> bool:
        return job.state.status == "paused" and job.executor is None

    # -- removing and regrouping runs ----------------------------------------------------------------
    def delete_run(self, run_id: str, *, caller: Caller | None = None) -> None:
        """Delete a finished run with its points and checkpoint. NotAllowed for another student's
        run, ValueError for a run still queued, running or paused (stop it first)."""
        check_owner(caller, self.owner_of(run_id), "delete")
        status = self.status(run_id)
        if status in ACTIVE:
            raise ValueError(f"Run {run_id} is {status}: stop it first. Nothing was deleted.")
        with self._lock:
            self._jobs.pop(run_id, None)
        self.store.delete_run(run_id)

    def prune(self, keep: int = 100, *, caller: Caller | None = None) -> int:
        """Delete all but the ``keep`` newest finished runs; returns how many went. A student
        prunes only their own runs (keeping their newest ``keep``); the instructor and this
        machine's own code prune everyone's. A run queued, running or paused is never pruned."""
        owner = caller.owner if caller is not None and not caller.instructor else None
        with self._lock:
            live = [r for r, j in self._jobs.items() if j.state.status in ACTIVE]
        n = self.store.prune(keep, owner=owner, spare=live)
        with self._lock:
            for rid in [r for r in self._jobs if r not in live and self.store.get_run(r) is None]:
                del self._jobs[rid]
        return n

    def move_runs(self, old: str, new: str, *, caller: Caller | None = None) -> int:
        """Give every run (and sweep) of owner ``old`` to ``new``: two identities of one student
        merged. Instructor only; returns how many runs moved."""
        check_instructor(caller, "merge two students")
        n = self.store.set_owner(old, new)
        with self._lock:
            states = [j.state for j in self._jobs.values() if j.state.owner == old]
        for state in states:
            with state.lock:
                state.owner = new
                state.version += 1
        return n

    def new_class(self, *, caller: Caller | None = None) -> str:
        """Close the class: its runs stay stored, tagged with its label ("class 1") and off the
        class board; the next class starts with no lock and no answer revealed. Instructor only;
        returns the closed class's label."""
        check_instructor(caller, "start a new class")
        label = self.classroom.label()
        ids = set(self.store.archive_runs(label))
        with self._lock:
            states = [j.state for r, j in self._jobs.items() if r in ids]
        for state in states:
            with state.lock:
                state.archive = label
                state.version += 1
        self.classroom.start_new(len(ids), caller)
        return label

    # -- reading -----------------------------------------------------------------------------------
    def owner_of(self, run_id: str) -> str:
        return self._run_field(run_id, "owner")

    def status(self, run_id: str) -> str:
        return self._run_field(run_id, "status")

    def _run_field(self, run_id: str, name: str) -> str:
        """A run's ``owner`` or ``status``: live when in memory, else as stored."""
        job = self._jobs.get(run_id)
        if job is not None:
            return getattr(job.state, name)
        row = self.store.get_run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id}")
        return row[name]

    def snapshot(self, run_id: str) -> RunSnapshot:
        """The run's state now; for a run not in memory, read back from the store. A queued run
        also gets ``queue_position`` and ``queue_eta_s``."""
        job = self._jobs.get(run_id)
        if job is None:
            return stored_snapshot(self.store, run_id)
        snap = job.state.snapshot()
        snap.queue_position, snap.queue_eta_s = self.queue_info(run_id)
        return snap

    def runs(self, owner: str | None = None) -> list[RunSnapshot]:
        """Light snapshots (no series) of the runs in memory, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [j.state.snapshot(series=False) for j in reversed(jobs)
                if owner is None or j.state.owner == owner]

    def list_runs(self, owner: str | None = None, limit: int = 300,
                  archived: bool | None = None) -> list[RunSnapshot]:
        """Light snapshots of the stored runs, newest first; a run in memory as it is now.
        ``archived``: only closed classes' runs (True) or this class's (False)."""
        out = []
        for row in self.store.list_runs(owner=owner, limit=limit, archived=archived):
            job = self._jobs.get(row["id"])
            out.append(job.state.snapshot(series=False) if job is not None
                       else RunState.from_row(row).snapshot(series=False))
        return out

    @property
    def capacity(self) -> int:
        """Units that train at once without overbooking: every executor's slots (on Ray, the
        cluster's CPUs now times the units each worker time-slices)."""
        return sum(e.slots for e in self._executors)

    def queue_info(self, run_id: str) -> tuple[int | None, float | None]:
        """(position, seconds until it starts) of a queued run; (None, None) for any other."""
        with self._lock:
            job = self._jobs.get(run_id)
            unit = job.group.unit_id if job is not None and job.group is not None else run_id
            gathering = job is not None and job.gathering is not None
            if unit not in self._queue and not gathering:
                return None, None
            order = self._queue.order(self._active_by_owner())
            # one ETA per unit of work training now (a group's members share theirs)
            remaining = [self._unit_jobs(r)[0].state.eta_s for ex in self._executors
                         for r in ex.active if self._unit_jobs(r)]
            durations = list(self._durations)
        pos = len(order) if gathering else order.index(unit)   # a window closes behind the queue
        return pos, start_eta(pos, remaining, self.capacity, durations)

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
                self._windows.waiting()

    def subscribe(self, run_id: str, callback: Callable[[Event], None]) -> Callable[[], None]:
        subs = self._job(run_id).recorder.subscribers
        subs.append(callback)
        return lambda: subs.remove(callback) if callback in subs else None

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.05) -> str:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if st not in ACTIVE or (end is not None and time.monotonic() > end):
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

    # -- scheduling --------------------------------------------------------------------------------
    def _unit_jobs(self, unit_id: str) -> list[_Job]:
        """The runs of a unit of work: a group's members still in it, or the one run."""
        group = self._windows.group(unit_id)
        if group is not None:
            return group.members()
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
            self._windows.close(key, window)
        self._dispatch()

    def _admit(self) -> list[tuple[Any, Any]]:
        """Under the lock: take queued units for free slots (and, when time-slicing, newcomers)."""
        started = []
        cap = self.OVERBOOK * self.capacity
        while len(self._queue) and not self._closed:
            active = self._active_by_owner()
            free = [e for e in self._executors if len(e.active) < e.slots]
            if free:
                ex = min(free, key=lambda e: len(e.active))
                uid = self._queue.pop(active)
            elif self.slots > 1 and sum(active.values()) < cap:
                ex = min(self._executors, key=lambda e: len(e.active))
                uid = self._queue.pop(active, only_idle_owners=True)
            else:
                uid = None
            if uid is None:
                break
            unit = self._windows.starting(uid) or self._jobs[uid]
            ex.active.add(unit.unit_id)
            unit.executor, unit.started = ex, time.monotonic()
            for job in self._unit_jobs(unit.unit_id):
                job.executor, job.started = ex, unit.started
            started.append((unit, ex))
        return started

    def _dispatch(self) -> None:
        with self._lock:
            started = self._admit()
        for unit, ex in started:
            jobs = self._unit_jobs(unit.unit_id)
            try:
                for job in jobs:
                    job.recorder.set_status("running")
                ex.start(self._unit(unit.unit_id, jobs), {j.state.run_id: j.control for j in jobs})
            except Exception as e:   # e.g. the store failing: the run fails, the engine serves on
                for job in jobs:
                    job.recorder.fail(e)
                    self._release(job)

    def _unit(self, unit_id: str, jobs: list[_Job]) -> Unit:
        """What the executor is sent: plain data, a continuing run's checkpoint as bytes."""
        tickets = []
        for j in jobs:
            path = self.store.checkpoint_path(j.state.run_id)
            resume_from = path.read_bytes() if j.resume and path.exists() else None
            tickets.append(RunTicket(j.state.run_id, j.cfg.to_dict(), j.state.owner, resume_from))
        return Unit(unit_id, tickets, jobs[0].state.owner)

    def _release(self, job: _Job) -> None:
        """The run's part of its slot is free again: when its unit (the run, or its group) has
        ended, record its time and start what waits."""
        with self._lock:
            ex, group = job.executor, job.group
            job.executor, job.group = None, None
            unit = group or job
            if group is not None:
                group.live.discard(job.state.run_id)
            if ex is not None and (group is None or not group.live):
                ex.active.discard(unit.unit_id)
                self._windows.ended(unit.unit_id)
                if unit.started is not None and job.state.status == "done":
                    self._durations = (self._durations + [time.monotonic() - unit.started])[-50:]
        self._dispatch()

    def _command(self, job: _Job, verb: str) -> None:
        if job.executor is not None:
            job.executor.command(job.state.run_id, verb)

    # -- what executors report ---------------------------------------------------------------------
    def _on_event(self, run_id: str, ev: Event) -> None:
        """Every event of every run, from whichever executor trains it."""
        job = self._jobs.get(run_id)
        if job is None:
            return
        if job.state.status in ACTIVE:
            try:
                job.recorder.record(ev)
            except Exception as e:   # e.g. the store failing: fail the run, stop its training
                job.recorder.fail(e)
                job.control.stop()
                self._command(job, "stop")
        if isinstance(ev, Ended):
            self._release(job)

    def _on_lost(self, ex: Any, unit_ids: list[str], why: str) -> None:
        """Units died with their executor: each of their runs still active continues from its
        last checkpoint, once; a dead worker process is replaced."""
        with self._lock:
            lost = []
            for uid in unit_ids:
                lost += self._unit_jobs(uid)
                ex.active.discard(uid)
                self._windows.ended(uid)
            for j in lost:
                j.executor, j.group = None, None
            dead = getattr(ex, "alive", True) is False
            if dead and not self._closed and ex in self._executors:
                self._executors[self._executors.index(ex)] = self._new_executor(ex.index)
        for job in lost:
            if job.state.status in ACTIVE and not self._closed:
                self._recover(job, why)
        self._dispatch()

    def _recover(self, job: _Job, why: str) -> None:
        try:
            job.recorder.flush()
            if job.control.stopped:       # it was being stopped anyway
                job.recorder.set_status("stopped", job.recorder.stop_reason)
                return
            if job.recoveries >= MAX_RECOVERIES:
                job.recorder.set_status("failed", f"the worker training this run stopped "
                                                  f"unexpectedly ({why}) again; Continue resumes "
                                                  f"it from its last checkpoint")
                return
            job.recoveries += 1
            path = self.store.checkpoint_path(job.state.run_id)
            where = (f"its last checkpoint (epoch {read_run_checkpoint(path).epoch})"
                     if path.exists() else "the start")
            self._requeue(job, f"The worker training this run stopped unexpectedly ({why}); "
                               f"it continues from {where} by itself.")
        except Exception as e:     # e.g. the store failing: the run fails, the engine serves on
            job.recorder.fail(e)

    # -- internals ---------------------------------------------------------------------------------
    def _job(self, run_id: str) -> _Job:
        job = self._jobs.get(run_id)
        if job is None:
            raise KeyError(f"run {run_id} is not managed by this engine")
        return job

    def _trim(self) -> None:
        finished = [r for r, j in self._jobs.items() if j.state.status not in ACTIVE]
        for r in finished[: max(0, len(finished) - self.KEEP_FINISHED)]:
            del self._jobs[r]


def check_resources(cfg: RunConfig, stacked: int = 1) -> None:
    """Refuse configs that would not fit in memory before they start; ``stacked``: that many runs
    of this config's group trained as stacked students in one pass."""
    from kdengine.run.resources import estimate_bytes, memory_limit
    need, what = estimate_bytes(cfg, stacked)
    limit = memory_limit(cfg)
    if need > limit:
        who = f"these {stacked} stacked runs need" if stacked > 1 else "this run needs"
        fewer = " or stack fewer runs" if stacked > 1 else ""
        raise ConfigError(what, f"{who} about {need / 2**30:.2f} GiB, more than the "
                                f"{limit / 2**30:.2f} GiB allowed; most of it comes from {what}, "
                                f"so make that smaller{fewer}")


def stored_snapshot(store: Store, run_id: str) -> RunSnapshot:
    """A run read back from the store, series and latest artifacts included."""
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no run {run_id}")
    arts = {name: items[-1][1] for name in store.artifact_names(run_id)
            if (items := store.artifacts(run_id, name))}
    return RunState.from_row(row, store.series(run_id), arts).snapshot()


def train(cfg: RunConfig, emit: Callable[[Event], None] | None = None) -> dict:
    """Run a config in this thread, without the engine's queue and store (tests, notebooks), with
    the same per-epoch monitors an engine run gets; returns the summary."""
    return make_trainer(cfg, emit, checkpoints=False).run()
