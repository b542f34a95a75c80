"""What an executor trains, and the one place a trainer is built.

A unit of work is one run, or a group of runs trained as stacked students in one pass
(:mod:`kdengine.run.group`). It crosses to the executor as plain data (:class:`Unit`: configs as
dicts, a continuing run's last checkpoint as bytes), so a thread, a worker process and a Ray actor
all receive the same thing and call the same :func:`train_unit`. Every run of the unit ends with
exactly one :class:`~kdengine.core.events.Ended` event, whatever happens inside it; only the death of
the executor itself (a killed process, a lost node) can leave a run without one, which the engine
notices and recovers.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable

from kdengine.core.config import RunConfig
from kdengine.core.events import Emit, Ended, Event, Status
from kdengine.core.knobs import ConfigError
from kdengine.run.control import Control, StopRequested
from kdengine.run.monitors import standard_monitors
from kdengine.run.trainer import NonFiniteLoss, Trainer


@dataclass
class RunTicket:
    """One run as an executor receives it."""
    run_id: str
    config: dict                     # a validated RunConfig as a dict
    owner: str = ""
    resume_from: bytes | None = field(default=None, repr=False)   # its last checkpoint, to go on


@dataclass
class Unit:
    """One run, or a group trained in one pass; one queue entry and one executor slot."""
    unit_id: str
    runs: list[RunTicket]
    owner: str = ""                  # whose turn in the fair queue it takes and time slices

    @property
    def grouped(self) -> bool:
        return len(self.runs) > 1


def make_trainer(cfg: RunConfig, emit: Emit | None = None, control: Control | None = None,
                 resume_from: bytes | None = None, checkpoints: bool = True) -> Trainer:
    """The one construction of a run's trainer (with the per-epoch monitors every run gets)."""
    return Trainer(cfg, emit, control, resume_from=resume_from, monitors=standard_monitors(),
                   checkpoints=checkpoints)


def ended_by(exc: BaseException | None, summary: dict) -> Ended:
    """How a run (or a pass) ended, from what its training raised (None: it finished)."""
    if exc is None:
        return Ended("done", summary)
    if isinstance(exc, (StopRequested, InterruptedError)):
        return Ended("stopped", summary)
    if isinstance(exc, (NonFiniteLoss, ConfigError)):
        return Ended("failed", error=str(exc))
    msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Ended("failed", error=msg, traceback="".join(traceback.format_exception(exc)))


def train_unit(unit: Unit, controls: dict[str, Control], emit: Callable[[str, Event], None],
               hold: Callable[[Control], None] | None = None,
               leave: Callable[[Control], None] | None = None) -> None:
    """Train ``unit`` in this thread. ``controls`` holds each run's pause / stop; ``emit(run_id,
    event)`` carries every event back. ``hold`` and ``leave`` bracket the training when the
    executor time-slices its runs (:mod:`kdengine.run.time_slices`). Raises only for what kills the
    executor itself (``BaseException`` that is not an ``Exception``)."""
    for t in unit.runs:
        controls[t.run_id].on_pause = (lambda rid: lambda paused: emit(
            rid, Status("paused" if paused else "running")))(t.run_id)
    if unit.grouped:
        from kdengine.run.group import GroupControl, GroupTrainer, Member
        control: Control = GroupControl(unit.owner, {t.run_id: controls[t.run_id] for t in unit.runs})
        members = [Member(t.run_id, RunConfig.from_dict(t.config),
                          (lambda rid: lambda ev: emit(rid, ev))(t.run_id), controls[t.run_id])
                   for t in unit.runs]
        build = lambda: GroupTrainer(members, control, standard_monitors())  # noqa: E731
    else:
        (t,) = unit.runs
        control = controls[t.run_id]
        build = lambda: make_trainer(RunConfig.from_dict(t.config),  # noqa: E731
                                     lambda ev: emit(t.run_id, ev), control, t.resume_from)
    if hold is not None:
        hold(control)
    try:
        _train(build, control, unit, emit)
    finally:
        if leave is not None:
            leave(control)


def _train(build: Callable[[], Trainer], control: Control, unit: Unit,
           emit: Callable[[str, Event], None]) -> None:
    trainer, exc = None, None
    try:
        if control.stopped:
            raise StopRequested()
        trainer = build()
        summary = trainer.run()
    except Exception as e:      # any fault inside a run is recorded; the executor keeps serving
        exc, summary = e, (trainer.summary if trainer is not None else {})
    ended = ended_by(exc, summary)
    if unit.grouped:
        if trainer is not None:
            trainer.finish(ended)
        else:                   # the pass could not even be built: every member ends the same way
            for t in unit.runs:
                emit(t.run_id, ended)
    else:
        emit(unit.runs[0].run_id, ended)
