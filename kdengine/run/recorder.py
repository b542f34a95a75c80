"""The one place a run's events are written down: its live state (what pages read), its
subscribers, and the store (status, metrics, summary, artifacts, checkpoint file).

Whatever trained the run (a thread, a worker process, a Ray actor; alone or in a group), its events
arrive here unchanged. Metrics reach SQLite in batches, at least every ``flush_s`` seconds and at
every epoch end, so a killed server loses at most that much; a checkpoint is written atomically as
it arrives.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable

from kdengine.core.checkpoints import write_bytes_atomic
from kdengine.core.events import Artifacts, Checkpoint, Ended, Event, Metrics, Status
from kdengine.core.store import Store
from kdengine.run.snapshot import RunState


class Recorder:
    """Folds one run's events into its :class:`RunState`, its subscribers and the store."""

    def __init__(self, store: Store, state: RunState, flush_s: float):
        self.store, self.state, self.flush_s = store, state, flush_s
        self.subscribers: list[Callable[[Event], None]] = []
        self.pending: list[tuple[int, float, dict]] = []
        self.last_flush = time.monotonic()
        self.stop_reason = "stopped by the user"      # what a stopped run's row says (Engine.stop)

    @property
    def run_id(self) -> str:
        return self.state.run_id

    def record(self, ev: Event) -> None:
        """One event of the run. Raises when the store fails (the caller fails the run)."""
        if isinstance(ev, Ended):
            self.end(ev)
            return
        self.state.apply(ev)
        self._tell(ev)
        if isinstance(ev, Metrics):
            self.pending.append((ev.step, ev.epoch, ev.values))
            if "test_acc" in ev.values or time.monotonic() - self.last_flush > self.flush_s:
                self.flush()
        elif isinstance(ev, Artifacts):
            for name, data in ev.data.items():
                self.store.add_artifact(self.run_id, ev.step, name, data)
        elif isinstance(ev, Checkpoint):
            write_bytes_atomic(self.store.checkpoint_path(self.run_id), ev.data)
        elif isinstance(ev, Status):
            self.store.set_status(self.run_id, ev.status)

    def end(self, ev: Ended) -> None:
        """How the run ended: its last points, its summary, its final status. Subscribers hear
        of it before the live state says so, so that whoever waits for the status finds them told."""
        self.flush()
        status, error = ev.status, ev.error
        if status == "stopped":
            error = self.stop_reason
        if status in ("done", "stopped"):
            self.store.set_summary(self.run_id, ev.summary)
            self.state.apply(ev)
        self.store.set_status(self.run_id, status, error)
        self._tell(ev)
        self.state.set_status(status, error, ev.traceback)

    def set_status(self, status: str, error: str | None = None, tb: str | None = None) -> None:
        self.store.set_status(self.run_id, status, error)
        self.state.set_status(status, error, tb)
        self._tell(Status(status))

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed because recording it broke (e.g. the store failing): the in-memory
        state still tells the page, whatever the store does."""
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            self.store.set_status(self.run_id, "failed", msg)
        except Exception:
            pass
        self.state.set_status("failed", msg, traceback.format_exc())
        self._tell(Ended("failed", error=msg))

    def flush(self) -> None:
        if self.pending:
            self.store.add_metrics(self.run_id, self.pending)
        self.pending = []
        self.last_flush = time.monotonic()

    def _tell(self, ev: Event) -> None:
        for cb in list(self.subscribers):
            try:
                cb(ev)
            except Exception:  # a broken subscriber must not kill the run
                pass
