"""The method contract (DESIGN.md section 2) and the registry.

A method owns one student (plus any helper modules it trains: regressors, a cohort, a discriminator)
and sees the teachers read-only. The trainer calls ``loss_terms(batch, step)`` each step and sums the
returned, already-weighted terms; the stable term names ("ce", "kd", "tckd", ...) are what the charts
plot, so a new method needs no page code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.core.registry import get_method_class, method_names, register  # noqa: F401  (re-exported)

@dataclass
class NoParams:
    pass


@dataclass
class Batch:
    """One training step's data. ``labeled`` marks samples whose label the student may use."""
    x: Tensor
    y: Tensor
    labeled: Tensor
    idx: Tensor
    # Teacher logits for this batch, one tensor per teacher, when the trainer could cache them
    # (fixed, un-augmented transfer set); otherwise None and the method runs the teachers itself.
    teacher_logits: list[Tensor] | None = None
    # True when every sample of the transfer set is labelled: lets hard_ce skip the mask (and the
    # host sync that testing the mask would cost every step).
    all_labeled: bool = False


@dataclass
class TrainContext:
    """What a method may know about the run it is part of."""
    steps_per_epoch: int
    epochs: int
    n_classes: int
    input_shape: tuple
    device: torch.device
    data_kind: str = "image"          # "2d", "image" or "text"
    seed: int = 0
    extras: dict = field(default_factory=dict)   # e.g. the transfer set for setup()

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def epoch_of(self, step: int) -> float:
        return step / max(1, self.steps_per_epoch)


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    # Terms this method can emit, for charts that want to lay out panels before the first point.
    term_names: ClassVar[tuple[str, ...]] = ()
    uses_hard_labels: ClassVar[bool] = True
    # Multi-hot targets (the text task) need per-label losses; methods that have them say so.
    supports_multilabel: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teachers: list[nn.Module], params: Any, ctx: TrainContext):
        self.student = student
        self.teachers = list(teachers)      # a plain list: never registered, never optimised
        self.params = params
        self.ctx = ctx
        for t in self.teachers:
            t.eval()
            t.requires_grad_(False)

    # ---- hooks the trainer calls ---------------------------------------------------------------
    def setup(self, data: Any) -> None:
        """Called once before training (e.g. to train specialists). ``data`` is the DataBundle."""

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student whose parameters join the optimiser."""
        return []

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Extra scalar metrics recorded at the end of each epoch (e.g. MagSim)."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """Plain data (lists / numpy) for visualisations, e.g. the latest BSS samples."""
        return {}

    def train(self, mode: bool = True) -> None:
        self.student.train(mode)
        for m in self.extra_modules():
            m.train(mode)
        for t in self.teachers:
            t.eval()

    # ---- helpers for subclasses ----------------------------------------------------------------
    def teacher_logits(self, batch: Batch, i: int = 0) -> Tensor:
        """Teacher i's logits for the batch: cached when available, else computed in eval/no_grad."""
        if batch.teacher_logits is not None:
            return batch.teacher_logits[i]
        return self.run_teacher(self.teachers[i], batch.x)

    @staticmethod
    def run_teacher(teacher: nn.Module, x: Tensor) -> Tensor:
        teacher.eval()
        with torch.no_grad():
            return teacher(x).float()

    def hard_ce(self, logits: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy on the labelled part of the batch (0 when the batch has no labels)."""
        if batch.y.dim() == 2:   # multi-hot targets (text data): per-label BCE, multilabel.py
            from kdengine.losses.multilabel import hard_loss
            return hard_loss(logits, batch.y, batch.labeled)
        if batch.all_labeled:
            return F.cross_entropy(logits, batch.y)
        lab = batch.labeled
        # Sum over labelled samples / batch size: keeps the per-step scale independent of how many
        # labels happen to fall in this batch, and avoids a host sync on lab.any().
        ce = F.cross_entropy(logits, batch.y.clamp_min(0), reduction="none")
        return (ce * lab).sum() / lab.sum().clamp_min(1)

    def progress(self, step: int) -> float:
        """Training progress in [0, 1]."""
        return min(1.0, step / max(1, self.ctx.total_steps))
