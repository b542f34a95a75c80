"""End-of-epoch evaluation: accuracies, and agreement and KL with the teacher."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdengine.data import DataBundle
from kdengine.models import logits_of


@dataclass
class EvalSet:
    """What an evaluation reads, on the device: a run builds it once, so that its epochs do not copy
    the test set to the device again each time. ``train_*``: the first ``max_train`` transfer rows."""
    kind: str
    test_x: torch.Tensor
    test_y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    train_x: torch.Tensor
    train_y: torch.Tensor
    # the teacher's side of agreement and the test KL, (its logits, argmax, p, sum p log p): the
    # same every epoch
    _teacher: tuple | None = field(default=None, repr=False)

    def teacher_side(self, t_test_logits: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(argmax, p, sum p log p)`` of the teacher's test logits, computed once per run (a run
        has one teacher tensor; another one replaces it)."""
        if self._teacher is None or self._teacher[0] is not t_test_logits:
            log_pt = t_test_logits.float().log_softmax(-1)
            p = log_pt.exp()
            self._teacher = (t_test_logits, t_test_logits.argmax(-1), p, (p * log_pt).sum(-1))
        return self._teacher[1:]

    @classmethod
    def of(cls, data: DataBundle, device: torch.device, max_train: int = 5000,
           transfer: tuple[torch.Tensor, torch.Tensor] | None = None) -> "EvalSet":
        """``transfer``: the transfer set's (x, y) when the caller holds them on the device already
        (the train rows are then views of them, not copies)."""
        x, y = transfer or (data.transfer.x, data.transfer.y)
        n = min(len(y), max_train)
        val = None if data.val is None else (data.val.x.to(device), data.val.y.to(device))
        return cls(data.kind, data.test.x.to(device), data.test.y.to(device), val,
                   x[:n].to(device), y[:n].to(device))


@torch.no_grad()
def evaluate(student: nn.Module, data: DataBundle | EvalSet, device: torch.device,
             t_test_logits: torch.Tensor | None, max_train: int = 5000) -> dict[str, float]:
    """Train/test accuracy (and validation, when the data has a split), and agreement and
    KL(teacher || student) with the teacher on test."""
    return evaluate_each(student, data, device, t_test_logits, max_train)[0]


@torch.no_grad()
def evaluate_each(student: nn.Module, data: DataBundle | EvalSet, device: torch.device,
                  t_test_logits: torch.Tensor | None, max_train: int = 5000) -> list[dict[str, float]]:
    """:func:`evaluate` for each student of a stack (logits ``[S, N, C]``; one dict per student) or
    of a plain model (one dict). The same reductions either way, so a stacked student's numbers are
    the ones it would get alone. ``data``: the bundle, or its :class:`EvalSet` (``max_train`` is then
    the set's own)."""
    ev = data if isinstance(data, EvalSet) else EvalSet.of(data, device, max_train)
    s_test = logits_of(student, ev.test_x, device)
    if ev.kind == "text":  # multi-label: per-label accuracy, micro-F1, binary KL (multilabel.py)
        from kdengine.losses.multilabel import metrics
        return [metrics(s_test, ev.test_y, logits_of(student, ev.train_x, device), ev.train_y,
                        t_test_logits)]
    out = {"test_acc": (s_test.argmax(-1) == ev.test_y).float().mean(-1)}
    if ev.val is not None:   # what a search selects on, so the test figure stays unseen
        s_val = logits_of(student, ev.val[0], device)
        out["val_acc"] = (s_val.argmax(-1) == ev.val[1]).float().mean(-1)
    s_tr = logits_of(student, ev.train_x, device)
    out["train_acc"] = (s_tr.argmax(-1) == ev.train_y).float().mean(-1)
    if t_test_logits is not None:
        t_top, p, p_log_p = ev.teacher_side(t_test_logits)
        out["agreement"] = (s_test.argmax(-1) == t_top).float().mean(-1)
        out["kl_test"] = (p_log_p - (p * s_test.log_softmax(-1)).sum(-1)).mean(-1)
    # one host sync and one read for all the metrics: [metrics, students] -> a dict per student
    rows = torch.stack([v.float().reshape(-1) for v in out.values()]).t().tolist()
    return [dict(zip(out, row)) for row in rows]
