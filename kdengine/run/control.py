"""Pause and stop, asked of a run from another thread (a page, the engine, a worker's command loop)."""
from __future__ import annotations

import threading
from typing import Callable


class StopRequested(Exception):
    """Raised inside the training loop when the user pressed Stop."""


class Control:
    """Pause / stop flags shared between the engine and one trainer (thread-safe).

    ``interrupt`` is a plain attribute so the hot loop checks it with one read per step;
    ``on_pause(paused)`` is told when the run actually blocks and when it goes on."""

    def __init__(self):
        self.interrupt = False
        self._resume = threading.Event()
        self._resume.set()
        self._stop = False
        self.on_pause: Callable[[bool], None] | None = None

    def pause(self):
        self._resume.clear()
        self.interrupt = True

    def resume(self):
        self._resume.set()
        self.interrupt = self._stop

    def stop(self):
        self._stop = True
        self.interrupt = True
        self._resume.set()

    @property
    def stopped(self) -> bool:
        return self._stop

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def checkpoint(self) -> None:
        """Block while paused; raise StopRequested when stopped."""
        if self.paused and not self._stop:
            if self.on_pause:
                self.on_pause(True)
            self._resume.wait()
            if self.on_pause:
                self.on_pause(False)
        if self._stop:
            raise StopRequested()
        self.interrupt = False
