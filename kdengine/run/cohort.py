"""Cohorts: runs from different sessions trained as stacked students in one pass.

When a class presses Train together, many sessions submit the same small run (same data, teacher,
student architecture and seed; the method's knobs may differ). The engine (``batch_window_s``,
:mod:`kdengine.run.batching`) gathers such runs into a cohort that takes one executor slot and
trains as one stack (:mod:`kdengine.run.stacking`): one batch, one teacher lookup and one optimiser
step for all.

Each member stays an ordinary run to its user. It gets its own events through ``Member.emit`` (loss
terms, accuracies, progress, the teacher and baseline lines, notices, and the per-epoch monitors,
evaluated on a plain student loaded from its slice), and its own checkpoint, exactly what a run of its config alone writes (its slice of the weights and of
the optimiser state), so Continue, Soft targets and Boundaries treat it as any run. Writing every
member's file at every epoch end cost a third of a digits pass, so a member's latest epoch-end
checkpoint is kept in memory and written when it leaves the pass, at the end, and at most every
``WRITE_EVERY_S`` seconds between (what a dead worker process can lose).
A member that is stopped or paused leaves the pass at the loop's next step (``Member.end``) and the
others train on; a paused member continues alone from its last checkpoint when resumed. A member
whose loss stops being finite fails alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import time

import torch

from kdengine.core.checkpoints import save_checkpoint
from kdengine.core.config import RunConfig
from kdengine.models import build_model
from kdengine.run.slicing import SlicedControl
from kdengine.run.stacking import StackTrainer, why_not_stacked
from kdengine.run.trainer import (Control, Emit, MonitorFactory, MonitorSetup, NonFiniteLoss,
                                  StopRequested, Trainer, read_window)

MAX_SIZE = 16       # members per cohort; more runs of one key make a second cohort
WRITE_EVERY_S = 5.0


def why_not_cohort(cfg: RunConfig) -> str:
    """Why a run cannot join a cohort ("" when it can)."""
    reason = why_not_stacked(cfg)
    if reason:
        return reason
    if cfg.student.arch != "mlp":
        return (f"cohorts stack MLP students only: a member leaving the pass takes its slice of the "
                f"optimiser state, which is mapped for MLPs, not for {cfg.student.arch} students")
    if cfg.student.dropout:
        return ("a student with dropout trains alone: in a stack its dropout masks would not be "
                "the ones it draws alone")
    return ""


@dataclass
class Member:
    """One run of a cohort, as the pass sees it."""
    run_id: str
    cfg: RunConfig
    emit: Emit                      # the run's own events
    control: Control                # its own pause / stop
    checkpoint_path: Path
    end: Callable[[dict], None]     # called once with how it ended (an executor's outcome)


class CohortControl(SlicedControl):
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


class CohortTrainer(StackTrainer):
    """The trainer loop on the members' stacked students, each member's events sent to its run."""

    def __init__(self, members: list[Member], control: CohortControl,
                 monitors: Sequence[MonitorFactory] = ()):
        super().__init__([m.cfg for m in members], control=control)
        self.members = members
        self.live = list(range(len(members)))      # columns of the members still in the pass
        self.finals: list[dict] = [{} for _ in members]
        self.factories = list(monitors)
        self.emit = self._to_live
        # Not None: the trainer's checkpoints are on; _save writes each member's own file.
        self.checkpoint_path = members[0].checkpoint_path
        self._index = {m.run_id: j for j, m in enumerate(members)}
        self._arts: dict[int, dict] = {}
        self._monitors: list[list] = [[] for _ in members]
        self._plain = None
        self._unwritten: dict[int, dict] = {}      # member -> its latest epoch-end checkpoint
        self._written_at = time.monotonic()
        control.on_leave = lambda run_id, why: self._leave(self._index[run_id], why)

    def run(self) -> dict:
        others = len(self.members) - 1
        self._notice(f"Trained in one pass with {others} other run{'s' if others > 1 else ''} "
                     f"of the same data, teacher and student (a cohort: one batch and one optimiser "
                     f"step for all; every number shown is this run's own). Pause or Stop takes it "
                     f"out of the pass.")
        return super().run()

    def summary_of(self, j: int) -> dict:
        out = {**self.summary, **self.finals[j], "cohort_size": len(self.members)}
        if self.student_params is not None:
            out["student_params"] = self.student_params
        return out

    def finish(self, outcome: dict) -> None:
        """End the members still in the pass with how the pass ended (``execute``'s outcome)."""
        for j in list(self.live):
            m = self.members[j]
            if outcome["status"] == "done" and not m.control.stopped:
                m.end({"status": "done", "summary": self.summary_of(j)})
                continue
            self._write(j)          # its last epoch-end checkpoint, as a run alone has it on disk
            if outcome["status"] == "failed":
                m.end(outcome)
            else:                   # stopped during the baseline, or the whole pass stopped
                m.end({"status": "stopped", "summary": self.summary_of(j)})

    # -- members leaving -------------------------------------------------------------------------
    def _leave(self, j: int, why: str, error: str = "") -> None:
        self._write(j)
        self.live.remove(j)
        m = self.members[j]
        self.control.members.pop(m.run_id, None)
        if why == "paused":
            m.emit({"type": "notice", "message": "Paused: this run left its cohort's pass; Resume "
                    "continues it alone from its last checkpoint."})
            m.end({"status": "paused"})
        elif why == "stopped":
            m.end({"status": "stopped", "summary": self.summary_of(j)})
        else:
            m.end({"status": "failed", "error": error, "traceback": None})

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
    def _to_live(self, ev: dict) -> None:
        for j in self.live:
            self.members[j].emit(ev)

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
            m.emit({"type": "metrics", "step": step, "epoch": epoch, "values": values})
            if final:
                self.finals[j].update({f"final_{k}": v for k, v in values.items()})
                arts = self._arts.pop(j, None)
                if arts:
                    m.emit({"type": "artifacts", "step": step, "epoch": int(epoch), "data": arts})

    def _save(self, student, extra, opt, sched, gen, epoch, step):
        """Each live member's checkpoint, as a run of its config alone saves it (kept; written
        at the end, or when ``WRITE_EVERY_S`` has passed)."""
        assert not extra, "stackable methods train no extra modules"
        opt_state = opt.state_dict()
        common = {"extra": [], "scheduler": sched.state_dict() if sched is not None else {},
                  "rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                  "epoch": epoch, "step": step}
        for j in self.live:
            m = self.members[j]
            self._unwritten[j] = {
                **common, "state_dict": student.state_dict_of(j),
                "optimizer": student.optimizer_state_of(opt_state, j), "config_hash": m.cfg.hash}
        if epoch == self.cfg.train.epochs or time.monotonic() - self._written_at >= WRITE_EVERY_S:
            for j in self.live:
                self._write(j)
            self._written_at = time.monotonic()

    def _write(self, j: int) -> None:
        payload = self._unwritten.pop(j, None)
        if payload is not None:
            save_checkpoint(self.members[j].checkpoint_path, payload)
