"""What every experiment shares (a sweep, a search, a TA-gap experiment): a spec, a driver thread,
stop and wait, a row in the store's ``sweeps`` table, and a registry of the experiments this process
drives so that pages find theirs again after a rerun.

An experiment trains nothing itself: it submits runs to the engine (``Engine.submit`` or
``submit_group``), waits for them and reads their snapshots and stored rows. Every run it asks for
goes through the engine's queue, its resource check and its executor, like a run from the Lab page.

A subclass names its ``kind`` (the store's kind column), its ``spec_cls`` and its id prefix, and
implements ``_drive`` (the work; returns the final status) and ``_state`` (what is stored besides
the spec). Starting one again under its id (``resume``) rebuilds it from the stored spec; the
subclasses find finished runs by config hash, so only what is missing is trained.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict
from typing import Any, ClassVar

from kdengine.core.roles import Caller, check_owner

FINISHED = ("done", "failed", "stopped")
# Backends of older versions, still found in stored specs: what runs them now.
RETIRED_BACKENDS = {"ray": "local"}


def retired_backend(spec, label: str) -> str:
    """Move a spec stored with a retired backend onto the one that replaces it; returns the line
    that says so ("" when the backend is current)."""
    old = getattr(spec, "backend", None)
    if old not in RETIRED_BACKENDS:
        return ""
    spec.backend = RETIRED_BACKENDS[old]
    return (f"This {label} asked for the {old} backend, which is gone: Ray is now where the engine "
            f"itself trains runs (KD_RAY_ADDRESS), so the {label} runs on the "
            f"{spec.backend} backend, on Ray whenever the engine uses it.")


class Spec:
    """Mixin for an experiment's spec dataclass: built from a stored (or user) dict, ignoring keys
    it does not know (a spec stored by an older version still loads)."""

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Experiment:
    """One experiment and the daemon thread that drives it. ``status`` is safe to read anywhere."""

    kind: ClassVar[str] = ""         # the store's kind column
    label: ClassVar[str] = ""        # in messages: "sweep", "TA-gap experiment"
    id_prefix: ClassVar[str] = ""    # ids look like sw-20260101-120000-ab12
    spec_cls: ClassVar[type]

    def __init__(self, engine, spec, owner: str = "", exp_id: str | None = None):
        self.engine, self.store = engine, engine.store
        # Lines the pages and the CLI show with the experiment (e.g. a retired backend, moved).
        self.notices: list[str] = [n for n in [retired_backend(spec, self.label)] if n]
        self.spec = spec.validate()
        self.owner = owner
        self.id = exp_id or time.strftime(f"{self.id_prefix}-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        self.status = "created"
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------
    def start(self):
        self.status = "running"
        self._save()
        _REGISTRY[self.id] = self
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, caller: Caller | None = None) -> None:
        """Stop the experiment and its runs; only its owner or the instructor may (``caller``)."""
        check_owner(caller, self.owner, "stop")
        self._stop.set()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    # -- driver ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            final = self._drive()
            if self._stop.is_set():
                final = "stopped"
        except Exception as e:  # the page shows the reason; runs already finished stay stored
            self.error = f"{type(e).__name__}: {e}"
            final = "stopped" if self._stop.is_set() else "failed"
        self._save(final)          # stored first: a page that sees `done` must find it stored
        self.status = final

    def _drive(self) -> str:
        """Do the work in the driver thread; return "done" or "failed" (a stop is noticed here)."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        """What the store keeps besides the spec, for pages after a restart and for ``resume``."""
        raise NotImplementedError

    def _save(self, status: str | None = None) -> None:
        self.store.save_sweep(self.id, self.kind, asdict(self.spec), self._state(),
                              status or self.status, name=self.spec.name, owner=self.owner)

    # -- the registry ----------------------------------------------------------------------------
    @classmethod
    def launch(cls, engine, spec, owner: str = ""):
        """Validate ``spec`` (a spec or a dict) and start it under a new id."""
        if isinstance(spec, dict):
            spec = cls.spec_cls.from_dict(spec)
        return cls(engine, spec, owner).start()

    @classmethod
    def live(cls, exp_id: str):
        """This kind's experiment of that id driven by this process, or None."""
        exp = _REGISTRY.get(exp_id)
        return exp if isinstance(exp, cls) else None

    @classmethod
    def resume(cls, engine, exp_id: str, caller: Caller | None = None, **spec_changes: Any):
        """Start a stored experiment again under the same id (the one still running, if it is).
        ``spec_changes`` set spec fields first (None leaves a field as stored). Only its owner or
        the instructor may (``caller``)."""
        row = engine.store.get_sweep(exp_id)
        if row is None or row["kind"] != cls.kind:
            raise KeyError(f"no {cls.label} {exp_id}")
        check_owner(caller, row["owner"], "resume")
        live = cls.live(exp_id)
        if live is not None and not live.done:
            return live
        spec = cls.spec_cls.from_dict(row["spec"])
        for name, value in spec_changes.items():
            if value is not None:
                setattr(spec, name, value)
        return cls(engine, spec, owner=row["owner"], exp_id=exp_id).start()


_REGISTRY: dict[str, Experiment] = {}


def is_running(exp_id: str) -> bool:
    """Whether this process is driving that experiment and it has not finished (pages poll then)."""
    exp = _REGISTRY.get(exp_id)
    return exp is not None and not exp.done


def shown_status(stored_status: str, live: Experiment | None) -> str:
    """Status of a stored experiment: 'running' in the store with no driver in this process means
    the server stopped mid-way (resume picks it up)."""
    if live is None and stored_status in ("created", "running"):
        return "interrupted"
    return live.status if live is not None else stored_status
