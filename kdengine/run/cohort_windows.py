"""Batch windows and groups: which queued runs the engine trains together, and as what unit.

A :class:`Group` is several runs trained as stacked students in one pass (:mod:`kdengine.run.group`):
one queue entry and one executor slot. Groups come from ``Engine.submit_group`` (a sweep's cells),
or from batch windows: with ``batch_window_s`` on, a fresh run that may join a cohort
(:func:`~kdengine.run.stacked.why_not_cohort`) does not go straight to the fair queue
(:mod:`kdengine.run.scheduler`); it waits up to that long in the window of its stack key (same data,
teacher, student and seed: :func:`~kdengine.run.stacked.group_key`), whoever submitted it. When the
window closes (its timer, or ``MAX_SIZE`` runs), two or more runs become one group, a cohort; a lone
run is queued as itself.

The engine keeps its runs, its lock, its executors and the timers; :class:`CohortWindows` keeps the
windows and the groups not yet ended, so that a run leaving before it starts (pause, stop) and a
group whose members all but one left are handled in one place.
"""
from __future__ import annotations

import uuid
from typing import Any, Protocol

from kdengine.core.config import RunConfig
from kdengine.run.group import MAX_SIZE
from kdengine.run.scheduler import FairQueue
from kdengine.run.stacked import group_key, why_not_cohort


def window_key(cfg: RunConfig) -> str:
    """The batch window a fresh run of ``cfg`` waits in ("" when it can only train alone)."""
    return "" if why_not_cohort(cfg) else group_key(cfg)


class Job(Protocol):
    """A run as batching sees it: the engine's job, which keeps where batching put it."""
    state: Any                       # its RunState: run_id, owner
    gathering: str | None            # the key of the window it waits in
    group: Group | None              # the group it is queued or training in


class Group:
    """Runs of one stack key trained in one pass: one queue entry, one executor slot."""

    def __init__(self, jobs: list[Job]):
        self.unit_id = f"group-{uuid.uuid4().hex[:10]}"
        self.jobs = jobs
        self.live = {j.state.run_id for j in jobs}     # members not yet ended
        self.owner = jobs[0].state.owner               # whose turn in the fair queue it takes
        self.executor: Any = None
        self.started: float | None = None

    def members(self) -> list[Job]:
        return [j for j in self.jobs if j.state.run_id in self.live]


class CohortWindows:
    """Runs waiting in batch windows, and the groups queued or training. Not thread-safe: the
    engine calls it under its own lock. A run's ``gathering`` (its window's key) and ``group`` say where it is."""

    def __init__(self, queue: FairQueue):
        self.queue = queue
        self._windows: dict[str, list[Job]] = {}       # stack key -> runs in its batch window
        self._groups: dict[str, Group] = {}          # queued or training, by unit id

    def gather(self, job: Job, key: str) -> list[Job] | None:
        """Put a run in its key's batch window; returns the window when this run opened it (the
        caller closes it after the wait, with ``close``)."""
        window = self._windows.setdefault(key, [])
        window.append(job)
        job.gathering = key
        if len(window) >= MAX_SIZE:      # full: no need to wait for the timer
            self._close(key)
        return window if len(window) == 1 else None

    def close(self, key: str, window: list[Job]) -> None:
        """The wait of ``window`` is over: close it unless it was closed early (full), and first every
        window opened before it. All wait as long, so theirs is over too; their timers may fire later
        on a busy machine, and the queue must keep the order in which the windows opened (who pressed
        Train first)."""
        if self._windows.get(key) is not window:
            return
        for k in list(self._windows):        # in the order they opened
            self._close(k)
            if k == key:
                break

    def waiting(self) -> list[str]:
        """Run ids in open windows (they queue once their window closes)."""
        return [j.state.run_id for jobs in self._windows.values() for j in jobs]

    def withdraw(self, job: Job) -> bool:
        """Take a run out of its window or its group that has not started (False when it is in
        neither: queued alone, or started)."""
        rid, group = job.state.run_id, job.group
        if job.gathering is not None:
            window = self._windows[job.gathering]
            window.remove(job)
            if not window:
                del self._windows[job.gathering]
            job.gathering = None
            return True
        if group is not None and group.executor is None:
            group.jobs.remove(job)
            group.live.discard(rid)
            job.group = None
            if not group.jobs:
                self.queue.remove(group.unit_id)
                del self._groups[group.unit_id]
            return True
        return False

    def queue_group(self, jobs: list[Job]) -> Group:
        """Queue runs as one group (``Engine.submit_group``): one entry under the first's owner."""
        group = Group(jobs)
        for job in jobs:
            job.group = group
        self._groups[group.unit_id] = group
        self.queue.push(group.unit_id, group.owner)
        return group

    def group(self, unit_id: str) -> Group | None:
        return self._groups.get(unit_id)

    def starting(self, unit_id: str) -> Group | Job | None:
        """What starts for a unit id popped from the queue: its group, or the one member left when
        the others withdrew; None for a run queued alone."""
        group = self._groups.get(unit_id)
        if group is None or len(group.jobs) > 1:
            return group
        del self._groups[unit_id]
        job = group.jobs[0]
        job.group = None
        return job

    def ended(self, unit_id: str) -> None:
        """The unit has left its executor (its last member ended, or its worker died)."""
        self._groups.pop(unit_id, None)

    def _close(self, key: str) -> None:
        """The window's runs go to the queue: two or more as one group, a lone run as itself."""
        jobs = self._windows.pop(key)
        for job in jobs:
            job.gathering = None
        if len(jobs) == 1:
            self.queue.push(jobs[0].state.run_id, jobs[0].state.owner)
            return
        # One cohort, even with idle executors: 8 small students cost about 1.5 runs as one
        # stack, and two stacks of 4 on two cores nearly twice that, for nearly the same wait.
        self.queue_group(jobs)
