"""A run as the pages see it: :class:`RunState`, folded from the run's events under a lock, and
:class:`RunSnapshot`, the plain copy of it that any thread may keep.

There is one run shape for every reader. A run the engine holds in memory and a run read back from
the store (after a restart, or another process's) both become a ``RunState`` and leave it through
:meth:`RunState.snapshot`, so a page never asks which of the two it was given.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kdengine.core.events import Artifacts, Ended, Event, Metrics, Notice, Phase, Status
from kdengine.core.store import ACTIVE

Series = dict[str, list[tuple[int, float, float]]]     # name -> [(step, epoch, value), ...]


@dataclass
class RunSnapshot:
    """Everything a page shows about one run, at one moment. ``series`` is None in the light
    snapshots of a run list (the costly part to copy, and what a list does not draw)."""
    run_id: str
    owner: str
    name: str
    config: dict
    status: str
    parent: str | None = None
    phase: str = ""
    phase_message: str = ""
    phase_progress: float = 0.0
    step: int = 0
    epoch: float = 0.0
    progress: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    traceback: str | None = None
    notices: list[str] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)
    series: Series | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    version: int = 0                    # bumps on every change: a page redraws only when it moved
    queue_position: int | None = None   # a queued run: 0 = next to start
    queue_eta_s: float | None = None    # a queued run: seconds until it starts (None: not known)
    lesson: str | None = None           # the lesson it was started from, or under whose lock
    archive: str | None = None          # the closed class it belongs to ("class 1"); None: this one

    @property
    def active(self) -> bool:
        """Queued, running or paused: something may still change."""
        return self.status in ACTIVE


class RunState:
    """Everything the UI shows about one run. Mutated only under ``lock``."""

    def __init__(self, run_id: str, config: dict, owner: str, name: str,
                 parent: str | None = None, status: str = "queued", created: float | None = None,
                 lesson: str | None = None):
        self.lock = threading.Lock()
        self.run_id, self.config, self.owner, self.name = run_id, config, owner, name
        self.parent = parent        # the sweep / experiment that asked for it
        self.lesson = lesson
        self.archive: str | None = None
        self.status = status
        self.phase, self.phase_message, self.phase_progress = status, "", 0.0
        if status == "queued":
            self.phase_message = "waiting for a worker"
        self.step, self.epoch, self.progress, self.eta_s = 0, 0.0, 0.0, None
        self.error: str | None = None
        self.traceback: str | None = None
        self.notices: list[str] = []
        self.series: Series = {}
        self.latest: dict[str, float] = {}
        self.artifacts: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.created = time.time() if created is None else created
        self.version = 0

    @classmethod
    def from_row(cls, row: dict, series: Series | None = None,
                 artifacts: dict[str, Any] | None = None) -> "RunState":
        """A stored run (a row of :meth:`Store.get_run`) with its points and latest artifacts."""
        state = cls(row["id"], row["config"], row["owner"], row["name"], row.get("parent"),
                    row["status"], row["created"], row.get("lesson"))
        state.archive = row.get("archive")
        state.error, state.summary = row["error"], dict(row["summary"])
        state.phase_message, state.phase_progress = "", 1.0
        if series:
            state.restore(series, [])
            state.step = max((v[-1][0] for v in series.values() if v), default=0)
            state.epoch = max((v[-1][1] for v in series.values() if v), default=0.0)
        state.progress = state.latest.get("progress", 1.0 if row["status"] == "done" else 0.0)
        state.artifacts = dict(artifacts or {})
        return state

    def apply(self, ev: Event) -> None:
        with self.lock:
            self.version += 1
            if isinstance(ev, Metrics):
                for k, v in ev.values.items():
                    self.series.setdefault(k, []).append((ev.step, ev.epoch, v))
                    self.latest[k] = v
                self.step = max(self.step, ev.step)
                self.epoch = max(self.epoch, ev.epoch)
                if "progress" in ev.values:
                    self.progress = ev.values["progress"]
                    self.eta_s = ev.values.get("eta_s")
            elif isinstance(ev, Phase):
                self.phase, self.phase_message, self.phase_progress = ev.phase, ev.message, ev.progress
            elif isinstance(ev, Notice):
                self.notices.append(ev.message)
            elif isinstance(ev, Artifacts):
                self.artifacts.update(ev.data)
                self.artifacts["_step"] = ev.step
            elif isinstance(ev, Status):
                self.status = ev.status
            elif isinstance(ev, Ended):
                self.summary.update(ev.summary)

    def set_status(self, status: str, error: str | None = None, tb: str | None = None) -> None:
        with self.lock:
            self.version += 1
            self.status = status
            if error:
                self.error, self.traceback = error, tb
            if status == "done":
                self.progress, self.eta_s = 1.0, 0.0

    def restore(self, series: Series, notices: list[str]) -> None:
        """Start from a run's earlier points and notices (it continues from a checkpoint)."""
        with self.lock:
            self.series = {k: list(v) for k, v in series.items()}
            self.latest = {k: v[-1][2] for k, v in series.items() if v}
            self.notices = list(notices)

    def snapshot(self, series: bool = True) -> RunSnapshot:
        """A copy any thread may keep; ``series=False`` leaves out the metric series."""
        with self.lock:
            return RunSnapshot(
                run_id=self.run_id, owner=self.owner, name=self.name, parent=self.parent,
                config=plain_copy(self.config), status=self.status, phase=self.phase,
                phase_message=self.phase_message, phase_progress=self.phase_progress,
                step=self.step, epoch=self.epoch, progress=self.progress, eta_s=self.eta_s,
                error=self.error, traceback=self.traceback, notices=list(self.notices),
                latest=dict(self.latest),
                series={k: list(v) for k, v in self.series.items()} if series else None,
                artifacts=dict(self.artifacts), summary=dict(self.summary),
                created=self.created, version=self.version, lesson=self.lesson,
                archive=self.archive)


def plain_copy(data: Any) -> Any:
    """A copy of plain data (dicts, lists, tuples of scalars, as a config holds). Snapshots are
    taken for every run a page or a sweep lists, several times a second; ``copy.deepcopy`` of a
    config took most of that time."""
    if isinstance(data, dict):
        return {k: plain_copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(plain_copy(v) for v in data)
    return data
