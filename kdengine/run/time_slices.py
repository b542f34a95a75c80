"""Time-slicing several runs inside one process: a baton that one run holds at a time.

Tiny models are Python-bound, so runs sharing a process as free threads only fight over the GIL.
Instead, each run holds the :class:`Baton` while it computes and hands it on when its slice is
over: the ticker thread raises the holder's ``Control.interrupt`` flag (which the trainer already
reads once per step), the trainer calls ``checkpoint()``, and :class:`SlicedControl` passes the
baton to the next waiting run. The next run is chosen round-robin by owner, so a student with a
ten-run sweep gets the same share of the process as a student with one run.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from kdengine.run.control import Control

SLICE_SECONDS = 0.05     # short enough that 4 runs in a process each show a point within ~0.5 s


class Baton:
    """One holder at a time; waiters are served round-robin by owner, FIFO within an owner."""

    def __init__(self, slice_s: float = SLICE_SECONDS):
        self.slice_s = slice_s
        self._cv = threading.Condition()
        self._holder: "SlicedControl | None" = None
        self._slice_end = 0.0
        self._waiting: "OrderedDict[str, list[SlicedControl]]" = OrderedDict()   # owner -> queue
        self._closed = False
        threading.Thread(target=self._tick, name="kd-baton", daemon=True).start()

    def acquire(self, ctl: "SlicedControl") -> None:
        with self._cv:
            self._waiting.setdefault(ctl.owner, []).append(ctl)
            while not (self._holder is None and self._next() is ctl):
                self._cv.wait()
            queue = self._waiting.pop(ctl.owner)
            queue.remove(ctl)
            if queue:                    # the owner goes to the back of the rotation
                self._waiting[ctl.owner] = queue
            self._holder, self._slice_end = ctl, time.monotonic() + self.slice_s

    def release(self, ctl: "SlicedControl") -> None:
        with self._cv:
            if self._holder is ctl:
                self._holder = None
                self._cv.notify_all()

    def waiting(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._waiting.values())

    def close(self) -> None:
        self._closed = True

    def _next(self) -> "SlicedControl | None":
        for queue in self._waiting.values():
            if queue:
                return queue[0]
        return None

    def _tick(self) -> None:
        """Ask the holder to hand over once its slice is over and someone is waiting."""
        while not self._closed:
            time.sleep(self.slice_s / 4)
            with self._cv:
                h = self._holder
                if h is not None and self._waiting and time.monotonic() > self._slice_end:
                    h.interrupt = True


class SlicedControl(Control):
    """A Control whose run shares a process with others through a :class:`Baton`."""

    def __init__(self, owner: str = ""):
        super().__init__()
        self.owner = owner
        self.baton: Baton | None = None

    def checkpoint(self) -> None:
        if self.baton is None:
            return super().checkpoint()
        self.baton.release(self)          # others compute while this run waits or yields
        try:
            super().checkpoint()          # blocks while paused; raises StopRequested when stopped
        finally:
            self.baton.acquire(self)

    def hold(self, baton: Baton) -> None:
        """Join ``baton`` and wait for the first turn (before the run's setup)."""
        self.baton = baton
        baton.acquire(self)

    def leave(self) -> None:
        if self.baton is not None:
            self.baton.release(self)
