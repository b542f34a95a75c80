"""A group: several runs trained as stacked students in one pass (:mod:`kdengine.run.stacked`).

Runs that share data, teacher, student architecture and seed, and differ only in the method's
per-student knobs (T, the loss weights), train as one stack: one batch, one teacher lookup and one
optimiser step for all. A group comes from ``Engine.submit_group`` (a sweep's or a search's cells) or
from the engine's batch windows (a cohort: a class pressing Train together on the same lesson).

Each member stays an ordinary run to its user. Its events go to its own ``emit`` (loss terms,
accuracies, progress, the teacher and student-alone lines, notices, the per-epoch monitors evaluated
on a plain student loaded from its slice) and its checkpoint is exactly what a run of its config
alone writes (its slice of the weights and of the optimiser state), so Continue, Soft targets and
Boundaries treat it as any run. Serialising every member's checkpoint at every epoch end cost a
third of a small pass, so a member's latest one is kept and sent when it leaves the pass, at the
end, and at most every ``WRITE_EVERY_S`` seconds between (what a dead worker can lose).
A member that is stopped or paused leaves the pass at the loop's next step and the others train on;
a paused member continues alone from its last checkpoint when resumed. A member whose loss stops
being finite fails alone.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from kdengine.core.checkpoints import RunCheckpoint
from kdengine.core.config import RunConfig
from kdengine.core.events import Artifacts, Checkpoint, Emit, Ended, Metrics, Notice
from kdengine.models import build_model, count_params
from kdengine.run.control import Control, StopRequested
from kdengine.run.stacked import stack_students, stacked_params
from kdengine.run.time_slices import SlicedControl
from kdengine.run.trainer import (MonitorFactory, MonitorSetup, NonFiniteLoss, Trainer,
                                  read_window)

MAX_SIZE = 16       # members per cohort; more runs of one key make a second cohort
WRITE_EVERY_S = 5.0


@dataclass
class Member:
    """One run of a group, as the pass sees it."""
    run_id: str
    cfg: RunConfig
    emit: Emit                      # the run's own events, its Ended included
    control: Control                # its own pause / stop


class GroupControl(SlicedControl):
    """The pass's control. Its ``interrupt`` is up while any member's own control asks to pause or
    stop; at the loop's next check each such member leaves (``on_leave``). The pass stops when no
    member is left, or on its own ``stop()`` (the engine shutting down). It time-slices with other
    runs of its process like any run (``hold``)."""

    def __init__(self, owner: str, members: dict[str, Control]):
        self._flag = False
        self.members = dict(members)
        self.on_leave: Callable[[str, str], None] = lambda run_id, why: None
        super().__init__(owner)

    @property
    def interrupt(self) -> bool:          # read once a step: a few attribute reads
        return self._flag or any(c.interrupt for c in self.members.values())

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._flag = value

    @property
    def stopped(self) -> bool:
        return self._stop or not self.members

    def checkpoint(self) -> None:
        for run_id, ctl in list(self.members.items()):
            if ctl.stopped or ctl.paused:
                del self.members[run_id]
                self.on_leave(run_id, "stopped" if ctl.stopped else "paused")
        if not self.members:
            raise StopRequested()
        super().checkpoint()


class GroupTrainer(Trainer):
    """The trainer loop on the members' stacked students, each member's events sent to its run."""

    def __init__(self, members: list[Member], control: GroupControl,
                 monitors: Sequence[MonitorFactory] = ()):
        super().__init__(members[0].cfg, control=control)
        self.members = members
        self.live = list(range(len(members)))      # columns of the members still in the pass
        self.finals: list[dict] = [{} for _ in members]
        self.factories = list(monitors)
        self.emit = self._to_live
        self.student_params: int | None = None      # one student's, once built
        self._index = {m.run_id: j for j, m in enumerate(members)}
        self._hashes = [m.cfg.hash for m in members]     # what each checkpoint is for
        self._arts: dict[int, dict] = {}
        self._monitors: list[list] = [[] for _ in members]
        self._plain: nn.Module | None = None
        self._unsent: dict[int, RunCheckpoint] = {}  # member -> its latest epoch-end checkpoint
        self._sent_at = time.monotonic()
        control.on_leave = lambda run_id, why: self._leave(self._index[run_id], why)

    def run(self) -> dict:
        others = len(self.members) - 1
        self._notice(f"Trained together with {others} other run{'s' if others > 1 else ''} that "
                     f"share{'s' if others == 1 else ''} its data, teacher and student; every "
                     f"number shown is this run's own. Pausing or stopping it takes it out of the "
                     f"group.")
        return super().run()

    def summary_of(self, j: int) -> dict:
        out = {**self.summary, **self.finals[j], "stacked": len(self.members)}
        if self.student_params is not None:
            out["student_params"] = self.student_params      # one student's, not the stack's
        return out

    def finish(self, ended: Ended) -> None:
        """End the members still in the pass with how the pass ended."""
        for j in list(self.live):
            m = self.members[j]
            if ended.status == "done" and not m.control.stopped:
                m.emit(Ended("done", self.summary_of(j)))
                continue
            self._send(j)           # its last epoch-end checkpoint, as a run alone has it
            if ended.status == "failed":
                m.emit(ended)
            else:                   # stopped during the baseline, or the whole pass stopped
                m.emit(Ended("stopped", self.summary_of(j)))

    # -- members leaving -------------------------------------------------------------------------
    def _leave(self, j: int, why: str, error: str = "") -> None:
        self._send(j)
        self.live.remove(j)
        m = self.members[j]
        self.control.members.pop(m.run_id, None)
        if why == "paused":
            m.emit(Notice("Paused: this run left its group; Resume continues it alone from its "
                          "last checkpoint."))
            m.emit(Ended("paused"))
        elif why == "stopped":
            m.emit(Ended("stopped", self.summary_of(j)))
        else:
            m.emit(Ended("failed", error=error))

    def _fail_nonfinite(self, part: dict, win_start: int, spe: int, exc: NonFiniteLoss) -> None:
        """Fail the members whose terms went bad, each with the message a run alone would give."""
        bad = []
        for pos, j in enumerate(self.live):
            try:
                read_window({k: [v[pos] for v in vs] for k, vs in part.items()}, win_start, spe)
            except NonFiniteLoss as e:
                bad.append((j, str(e)))
        if not bad:
            raise exc
        for j, msg in bad:
            self._leave(j, "failed", msg)
        if not self.live:
            raise StopRequested()            # every member has ended; the pass has no one left

    # -- the trainer's parts, per member ---------------------------------------------------------
    def _to_live(self, ev) -> None:
        for j in self.live:
            self.members[j].emit(ev)

    def _build_student(self, data) -> nn.Module:
        models = [Trainer._build_student(self, data) for _ in self.members]  # each seeded as alone
        self.student_params = count_params(models[0])
        return stack_students(models).to(self.device)

    def _train_student(self, data, method_cls, params, teachers, t_test_logits, t0) -> dict:
        teacher = teachers[0] if teachers else None
        self._monitors = [[mon for mon in (make(MonitorSetup(m.cfg, data, teacher, self.device,
                                                             method_cls.name))
                                           for make in self.factories) if mon is not None]
                          for m in self.members]
        if any(self._monitors):
            # the members' checkpoints keep the RNG state a run alone has: build off the record
            with torch.random.fork_rng(devices=[]):
                self._plain = build_model(self.cfg.student, data.input_shape,
                                          data.n_classes).to(self.device).eval()
        params = stacked_params(method_cls, [m.cfg for m in self.members], self.device)
        return super()._train_student(data, method_cls, params, teachers, t_test_logits, t0)

    def _flush(self, window, win_start, step, spe, *rest):
        while True:
            part = window if len(self.live) == len(self.members) else \
                {k: [v[self.live] for v in vs] for k, vs in window.items()}
            try:
                return super()._flush(part, win_start, step, spe, *rest)
            except NonFiniteLoss as e:
                self._fail_nonfinite(part, win_start, spe, e)

    def _window_weights(self) -> dict:
        """The live members' columns of per-student weights (_flush reads only their terms)."""
        weights = super()._window_weights()
        if len(self.live) == len(self.members):
            return weights
        return {k: w.reshape(-1)[self.live] if isinstance(w, torch.Tensor) and w.numel() > 1 else w
                for k, w in weights.items()}

    def _epoch_extras(self, student, method, monitors, evs, epoch) -> dict:
        """The method's epoch metrics for every student; each member's monitors on its own plain
        student. Artifacts wait for ``_record``, which sends them to their member."""
        shared = Trainer._epoch_extras(student, method, [], evs, epoch)
        for j in self.live:
            arts = dict(shared)
            if self._monitors[j]:
                self._plain.load_state_dict(student.state_dict_of(j))
                for mon in self._monitors[j]:
                    evs[j].update(mon.metrics(self._plain, evs[j]))
                    arts.update(mon.artifacts(self._plain, epoch + 1))
            if arts:
                self._arts[j] = arts
        return {}

    def _record(self, step, epoch, per_student, final=False) -> None:
        # an evaluation covers the whole stack; a log window only the live columns (_flush)
        cols = range(len(self.members)) if final else list(self.live)
        for j, values in zip(cols, per_student):
            if j not in self.live:
                continue
            m = self.members[j]
            m.emit(Metrics(step, epoch, values))
            if final:
                self.finals[j].update({f"final_{k}": v for k, v in values.items()})
                arts = self._arts.pop(j, None)
                if arts:
                    m.emit(Artifacts(step, int(epoch), arts))

    def _save(self, student, extra, opt, sched, gen, epoch, step):
        """Each live member's checkpoint, as a run of its config alone saves it. Kept as tensors
        (copies) and serialised only when sent: at the end, when the member leaves, or when
        ``WRITE_EVERY_S`` has passed, since serialising every member at every epoch end cost
        half of a small pass."""
        assert not extra, "stackable methods train no extra modules"
        opt_state = opt.state_dict()
        shared = dict(scheduler=copy.deepcopy(sched.state_dict()) if sched is not None else None,
                      rng=gen.get_state(), torch_rng=torch.get_rng_state(),
                      method=copy.deepcopy(self.method.extra_state()))
        for j in self.live:
            self._unsent[j] = RunCheckpoint(
                config_hash=self._hashes[j], epoch=epoch, step=step,
                state_dict=student.state_dict_of(j),
                optimizer=student.optimizer_state_of(opt_state, j), **shared)
        if epoch == self.cfg.train.epochs or time.monotonic() - self._sent_at >= WRITE_EVERY_S:
            for j in self.live:
                self._send(j)
            self._sent_at = time.monotonic()

    def _send(self, j: int) -> None:
        ck = self._unsent.pop(j, None)
        if ck is not None:
            self.members[j].emit(Checkpoint(ck.epoch, ck.step, ck.to_bytes()))
