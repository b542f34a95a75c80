"""The class as the server keeps it: the lesson lock, the answers revealed, which class this is.

One JSON file in the data folder (``class.json``), written atomically, so a reload, a new tab,
another page, a hand-edited URL or a server restart all see the same lock. Only the instructor
changes it (:mod:`kdengine.core.roles`). The lock's knob values are checked against the lesson by
:mod:`kdengine.teaching.lessons` before they get here; the engine applies the lock to every run a
student submits (:meth:`kdengine.run.engine.Engine.submit`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kdengine.core.config import RunConfig, flatten
from kdengine.core.json_files import read_dict, write_dict
from kdengine.core.roles import Caller, check_instructor

_lock = threading.Lock()


@dataclass
class ClassLock:
    """A lesson opened for the class: ``locked`` knobs fixed at their values, ``values`` where the
    others start."""
    lesson: str
    locked: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"lesson": self.lesson, "locked": dict(self.locked), "values": dict(self.values)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassLock":
        return cls(str(d["lesson"]), dict(d.get("locked") or {}), dict(d.get("values") or {}))


class ClassState:
    """``class.json``: {"number", "started", "lock", "revealed", "archives"}."""

    def __init__(self, root: Path | str):
        self.path = Path(root) / "class.json"

    def _read(self) -> dict:
        return read_dict(self.path)

    def _write(self, data: dict) -> None:
        write_dict(self.path, data)

    def _change(self, caller: Caller | None, what: str, edit) -> None:
        check_instructor(caller, what)
        with _lock:
            data = self._read()
            edit(data)
            self._write(data)

    # -- the lock ----------------------------------------------------------------------------------
    def lock(self) -> ClassLock | None:
        raw = self._read().get("lock")
        try:
            return ClassLock.from_dict(raw) if raw else None
        except (KeyError, TypeError, AttributeError):
            return None

    def set_lock(self, lock: ClassLock | None, caller: Caller | None = None) -> None:
        """Open a lesson for the class with ``lock`` (None lifts the lock)."""
        def edit(d):
            d["lock"] = lock.to_dict() if lock is not None else None
        self._change(caller, "change the lesson lock", edit)

    # -- answers -----------------------------------------------------------------------------------
    def revealed(self) -> set[str]:
        return set(self._read().get("revealed") or [])

    def reveal(self, lesson: str, shown: bool = True, caller: Caller | None = None) -> None:
        """Show (or hide again) a lesson's answer to the students."""
        def edit(d):
            ids = set(d.get("revealed") or [])
            d["revealed"] = sorted(ids | {lesson} if shown else ids - {lesson})
        self._change(caller, "reveal an answer", edit)

    # -- classes -----------------------------------------------------------------------------------
    def number(self) -> int:
        return int(self._read().get("number") or 1)

    def label(self) -> str:
        return f"class {self.number()}"

    def archives(self) -> list[dict]:
        return list(self._read().get("archives") or [])

    def start_new(self, runs: int, caller: Caller | None = None) -> str:
        """Close this class (its ``runs`` were archived under its label) and start the next: no
        lock, no answer revealed. Returns the closed class's label."""
        closed: list[str] = []

        def edit(d):
            n = int(d.get("number") or 1)
            closed.append(f"class {n}")
            d.setdefault("archives", []).append({"label": f"class {n}", "runs": runs,
                                                 "started": d.get("started"), "ended": time.time()})
            d.update(number=n + 1, started=time.time(), lock=None, revealed=[])
        self._change(caller, "start a new class", edit)
        return closed[0]


def apply_locks(cfg: RunConfig, locked: Mapping[str, Any]) -> tuple[RunConfig, list[str]]:
    """``cfg`` with every locked knob at the instructor's value, wherever the config was built (the
    Lab included); returns the config and the knobs that had to be put back. A locked knob the
    config does not have (a method without that knob) is left out."""
    flat = flatten(cfg.to_dict())
    changed = [k for k, v in locked.items() if k in flat and flat[k] != v]
    return (cfg.with_overrides({k: locked[k] for k in changed}) if changed else cfg), changed
