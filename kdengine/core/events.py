"""What a run says while it trains: one small dataclass per kind of event.

A trainer (and a method, through its ``TrainContext``) reports by calling ``emit(event)`` with one
of these; an executor carries them back to the engine unchanged (they pickle, so a worker process or
a Ray actor sends them as they are), and the engine's recorder folds them into the run's live state
and the store. Subscribers (the CLI, a search's pruner, a bench) receive the same objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union


@dataclass(frozen=True)
class Metrics:
    """Scalar values measured at ``step`` (a log window's loss terms, or an epoch's evaluation)."""
    step: int
    epoch: float
    values: dict[str, float]


@dataclass(frozen=True)
class Phase:
    """What the run is doing now ("data", "teacher", "student", "baseline", ...) and how far."""
    phase: str
    message: str
    progress: float = 0.0


@dataclass(frozen=True)
class Notice:
    """One line shown with the run, in words a student understands."""
    message: str


@dataclass(frozen=True)
class Artifacts:
    """Plain data for the pages (lists, numbers), e.g. an epoch's boundary grid or BSS samples."""
    step: int
    epoch: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Status:
    """The run paused or went on (its control says so from the training thread)."""
    status: str


@dataclass(frozen=True)
class Checkpoint:
    """The run's state at an epoch's end, serialised in the one checkpoint layout
    (:mod:`kdengine.core.checkpoints`); the recorder writes it to the run's file."""
    epoch: int
    step: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Ended:
    """How a run ended: ``done``, ``stopped``, ``paused`` (it left a stacked pass and continues
    alone when resumed) or ``failed`` (``error`` says why, in words; ``traceback`` for a bug)."""
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None


Event = Union[Metrics, Phase, Notice, Artifacts, Status, Checkpoint, Ended]
Emit = Callable[[Event], None]


def no_emit(event: Event) -> None:
    """An ``emit`` that drops everything (a method or trainer used outside a run)."""
