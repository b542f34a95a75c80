"""Batch windows and cohorts: which queued runs the engine trains together, and as what unit.

With ``batch_window_s`` on, a fresh run that can train as a stacked student
(:func:`~kdengine.run.cohort.why_not_cohort`) does not go straight to the fair queue
(:mod:`kdengine.run.scheduler`): it waits up to that long in the batch window of its stack key
(same data, teacher, student and seed: :func:`~kdengine.run.stacking.group_key`), whoever submitted
it. When the window closes (its timer, or ``MAX_SIZE`` runs), two or more runs become one
:class:`Cohort` (one queue entry and one executor slot, trained in one pass by
:mod:`kdengine.run.cohort`); a lone run is queued as itself.

The engine keeps its runs, its lock, its executors and the timers; :class:`Batcher` keeps the
windows and the cohorts not yet ended, so that a run leaving before it starts (pause, stop) and a
cohort whose members all but one left are handled in one place.
"""
from __future__ import annotations

import uuid
from typing import Any, Protocol

from kdengine.core.config import RunConfig
from kdengine.run.cohort import MAX_SIZE, CohortControl, why_not_cohort
from kdengine.run.scheduler import FairQueue
from kdengine.run.stacking import group_key


def window_key(cfg: RunConfig) -> str:
    """The batch window a fresh run of ``cfg`` waits in ("" when it can only train alone)."""
    return "" if why_not_cohort(cfg) else group_key(cfg)


class Job(Protocol):
    """A run as batching sees it: the engine's job, which keeps where batching put it."""
    state: Any                       # its RunState: run_id, owner
    gathering: str | None            # the key of the window it waits in
    cohort: Cohort | None            # the cohort it is queued or training in


class Cohort:
    """Runs of one stack key trained in one pass: one queue entry, one executor slot."""

    def __init__(self, jobs: list[Job]):
        self.unit_id = f"cohort-{uuid.uuid4().hex[:10]}"
        self.jobs = jobs
        self.live = {j.state.run_id for j in jobs}     # members not yet ended
        self.owner = jobs[0].state.owner               # whose turn in the fair queue it takes
        self.executor: Any = None
        self.started: float | None = None
        self.control: CohortControl | None = None      # the pass's, once it starts

    def members(self) -> list[Job]:
        return [j for j in self.jobs if j.state.run_id in self.live]


class Batcher:
    """Runs waiting in batch windows and the cohorts they became. Not thread-safe: the engine calls
    it under its own lock. A run's ``gathering`` (its window's key) and ``cohort`` say where it is."""

    def __init__(self, queue: FairQueue):
        self.queue = queue
        self._windows: dict[str, list[Job]] = {}       # stack key -> runs in its batch window
        self._cohorts: dict[str, Cohort] = {}          # queued or training, by unit id

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
        """Take a run out of its window or its cohort that has not started (False when it is in
        neither: queued alone, or started)."""
        rid, cohort = job.state.run_id, job.cohort
        if job.gathering is not None:
            window = self._windows[job.gathering]
            window.remove(job)
            if not window:
                del self._windows[job.gathering]
            job.gathering = None
            return True
        if cohort is not None and cohort.executor is None:
            cohort.jobs.remove(job)
            cohort.live.discard(rid)
            job.cohort = None
            if not cohort.jobs:
                self.queue.remove(cohort.unit_id)
                del self._cohorts[cohort.unit_id]
            return True
        return False

    def cohort(self, unit_id: str) -> Cohort | None:
        return self._cohorts.get(unit_id)

    def starting(self, unit_id: str) -> Cohort | Job | None:
        """What starts for a unit id popped from the queue: its cohort, or the one member left when
        the others withdrew; None for a run queued alone."""
        cohort = self._cohorts.get(unit_id)
        if cohort is None or len(cohort.jobs) > 1:
            return cohort
        del self._cohorts[unit_id]
        job = cohort.jobs[0]
        job.cohort = None
        return job

    def ended(self, unit_id: str) -> None:
        """The unit has left its executor (its last member ended, or its worker died)."""
        self._cohorts.pop(unit_id, None)

    def _close(self, key: str) -> None:
        """The window's runs go to the queue: two or more as one cohort, a lone run as itself."""
        jobs = self._windows.pop(key)
        for job in jobs:
            job.gathering = None
        if len(jobs) == 1:
            self.queue.push(jobs[0].state.run_id, jobs[0].state.owner)
            return
        # One cohort, even with idle executors: 8 digits students cost 1.45 x one run as one stack,
        # 2 x 1.35 as two stacks of 4 on two cores, nearly the same wait for twice the CPU.
        cohort = Cohort(jobs)
        for job in jobs:
            job.cohort = cohort
        self._cohorts[cohort.unit_id] = cohort
        self.queue.push(cohort.unit_id, cohort.owner)
