"""Hinton KD + CE and DKD + CE steps in closed form: the gradient of the weighted sum with respect to
the student's logits, and the terms' values left for the log window.

On the small students this app trains, a step's cost is mostly per-operation overhead: each autograd
node of a loss costs its forward operation, its record and its backward operation, and the loss
values cost as many operations again. These losses have simple gradients with respect to the logits,
so a step computes only that gradient, with plain tensor operations and no graph, and backpropagates
it from the logits (``Method.step_loss`` returns ``(terms, logits, grad)``). The values, which only
the charts read, are :class:`~kdengine.losses.deferred.DeferredTerm`\\ s: computed for a whole log
window at once (:func:`~kdengine.losses.deferred.window_values`).

The gradients (s = z / T, q = softmax(s), B the batch; each KD term keeps its T^2 and batch mean):
  KD:   d/dz [scale * KL(p || q)] = (scale / (T B)) (q - p)              (per sample)
  CE:   d/dz CE(y, softmax(z))    = (softmax(z) - onehot(y)) / B
  DKD:  with q' the non-target classes renormalised (0 at y) and p' the teacher's,
        d/ds TCKD = q_y - p_y at y, and q'_j (p_y - q_y) off it;  d/ds NCKD = q' - p'
tests/test_fused_losses.py checks values and parameter gradients against the losses' graphs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdengine.losses.deferred import DeferredTerm, StepValues
from kdengine.losses.fused import _float, log_softmax_rows, softmax_rows


# -- Hinton KD + CE --------------------------------------------------------------------------------
def kd_ce_step(student_logits: Tensor, table: Tensor, target: Tensor | None, T: float, scale: float,
               w_kd: float, w_ce: float) -> tuple[dict[str, DeferredTerm], Tensor]:
    """``(terms, grad)``: ``kd`` (and ``ce`` when a target is given), deferred, with the values of
    :func:`kdengine.losses.fused.kd_ce_terms`, and the gradient of ``w_kd * kd + w_ce * ce`` with
    respect to the logits. ``table``: the batch's columns of ``TeacherCache.kd_step_table``
    (``[2C + 1, B]``: P = factor * p with ``factor = scale / B``, G, the constants), so that the
    gradient is (w_kd scale / (T B)) softmax(z / T) + (w_ce / B) softmax(z) - G.

    Computed class-major, on ``[C, B]``: a softmax over dim 0 of a contiguous tensor is PyTorch's
    vectorised CPU kernel at any class count, where the usual last-dim kernel loops per row below
    16 classes (see fused.log_softmax_rows); the window's values then join the steps' columns."""
    z = _float(student_logits.detach())
    B, C = z.shape
    zt = z.t().contiguous()
    q = (zt if T == 1.0 else zt * (1.0 / T)).softmax(0)
    grad = q.mul(w_kd * scale / (T * B)).sub_(table[C:2 * C])
    if w_ce != 0.0:
        grad.add_(q if T == 1.0 else zt.softmax(0), alpha=w_ce / B)
    grad = grad.t()
    if grad.dtype != student_logits.dtype:
        grad = grad.to(student_logits.dtype)
    return KDCEValues(zt, table, target, T).terms(), grad


def columns(table: Tensor, rows: Tensor | slice) -> Tensor:
    """A batch's columns of a class-major table: ``rows`` a slice (the table in the epoch's order) or
    the batch's indices (index_select: much faster than ``table[:, idx]``'s general path)."""
    return table[:, rows] if isinstance(rows, slice) else table.index_select(1, rows)


def add_ce_grad(grad: Tensor, q1: Tensor, target: Tensor, w: float) -> Tensor:
    """``grad += w * (q1 - onehot(target))``, in place (q1: the softmax at T = 1)."""
    grad.add_(q1, alpha=w)
    return grad.scatter_add_(1, target.unsqueeze(1), grad.new_full((grad.shape[0], 1), -w))


class KDCEValues(StepValues):
    """One Hinton step's ``kd`` (and ``ce``) values, from its class-major detached logits ``z``
    (``[C, B]``) and teacher columns (``[2C + 1, B]``, :func:`kd_ce_step`)."""

    def __init__(self, z: Tensor, table: Tensor, target: Tensor | None, T: float):
        self.z, self.table, self.target, self.T = z, table, target, T
        self.names = ("kd",) if target is None else ("kd", "ce")

    @classmethod
    def evaluate(cls, steps: list["KDCEValues"]) -> dict[str, Tensor]:
        if not _alike(steps):
            return _one_by_one(cls, steps)
        n, T = len(steps), steps[0].T
        z, table = _joined(steps, "z", "table", dim=1)      # [C, n B], [2C + 1, n B]
        C = z.shape[0]
        log_q = (z if T == 1.0 else z * (1.0 / T)).log_softmax(0)
        out = {"kd": table[2 * C].view(n, -1).sum(1) - (table[:C] * log_q).view(C, n, -1).sum((0, 2))}
        if steps[0].target is not None:
            y = torch.cat([s.target for s in steps]).view(1, -1).long()
            log_q1 = log_q if T == 1.0 else z.log_softmax(0)
            out["ce"] = log_q1.gather(0, y).view(n, -1).mean(1).neg()
        return out


# -- DKD + CE --------------------------------------------------------------------------------------
def dkd_step(student_logits: Tensor, tables: tuple[Tensor, Tensor, Tensor], T: float,
             w_t: float, w_n: float, warm: float = 1.0, target: Tensor | None = None,
             w_ce: float = 0.0) -> tuple[dict[str, DeferredTerm], Tensor]:
    """``(terms, grad)``: ``tckd`` and ``nckd`` times ``warm`` (and ``ce`` when a target is given),
    deferred, with the values of :func:`kdengine.losses.fused.dkd_fused_terms`, and the gradient of
    ``warm * (w_t * tckd + w_n * nckd) + w_ce * ce`` with respect to the logits. ``tables``: the
    batch's rows of ``dkd_teacher_tables`` (K, const = [.., .., p_y], the target's mask)."""
    K, const, is_y = tables
    z = _float(student_logits.detach())
    B, C = z.shape
    s = z if T == 1.0 else z * (1.0 / T)
    wt, wn = w_t * warm * T / B, w_n * warm * T / B         # d/dz = (T^2 / B) (1 / T) d/ds
    q_y = torch.where(is_y, softmax_rows(s), 0.0).sum(1, keepdim=True)
    d = const[:, 2:3].to(z.dtype) - q_y                     # p_y - q_y
    qn = softmax_rows(s.masked_fill(is_y, float("-inf")))   # q', 0 at y
    grad = qn.mul_(d.mul(wt).add_(wn))                      # off y: q' (w_t d + w_n)
    grad.add_(K.view(B, 2, C, 2)[:, 1, :, 1], alpha=wn)      # - w_n p' (K holds -p', 0 at y)
    grad = torch.where(is_y, d.mul(-wt), grad)               # at y: w_t (q_y - p_y)
    if target is not None and w_ce != 0.0:
        add_ce_grad(grad, softmax_rows(z), target, w_ce / B)
    values = DKDValues(z, K, const, is_y, T, warm, target)
    return values.terms(), grad.to(student_logits.dtype)


class DKDValues(StepValues):
    """One DKD step's ``tckd``, ``nckd`` (times the warm-up) and ``ce`` values."""

    def __init__(self, z: Tensor, K: Tensor, const: Tensor, is_y: Tensor, T: float, warm: float,
                 target: Tensor | None):
        self.z, self.K, self.const, self.is_y, self.T = z, K, const, is_y, T
        self.warm, self.target = warm, target
        self.names = ("tckd", "nckd") if target is None else ("tckd", "nckd", "ce")

    @classmethod
    def evaluate(cls, steps: list["DKDValues"]) -> dict[str, Tensor]:
        if not _alike(steps):
            return _one_by_one(cls, steps)
        first, n, T = steps[0], len(steps), steps[0].T
        z, K, const, is_y = _joined(steps, "z", "K", "const", "is_y")
        # as in _DKD.forward, per sample: [log q | log q'] @ K plus the teacher's constants
        log_q = log_softmax_rows(z / T)
        log_qn = log_softmax_rows(log_q.masked_fill(is_y, float("-inf")))
        x = torch.cat((log_q, log_qn.masked_fill(is_y, 0.0)), 1)
        per = torch.bmm(x.unsqueeze(1), K.to(x.dtype)).squeeze(1) + const[:, :2].to(x.dtype)
        vals = per.view(n, -1, 2).sum(1) * (T * T / first.z.shape[0])
        if any(s.warm != 1.0 for s in steps):
            vals = vals * vals.new_tensor([s.warm for s in steps]).unsqueeze(1)
        out = {"tckd": vals[:, 0], "nckd": vals[:, 1]}
        if first.target is not None:
            out["ce"] = _ce_per_step(log_softmax_rows(z), steps)
        return out


def _alike(steps: list) -> bool:
    """Whether the steps can share one pass: the same T, batch shape and terms."""
    first = steps[0]
    return all(s.T == first.T and s.z.shape == first.z.shape and s.names == first.names
               for s in steps)


def _joined(steps: list, *fields: str, dim: int = 0) -> list[Tensor]:
    """Each field of the steps, their rows (``dim`` 1: columns) one after another."""
    return [torch.cat([getattr(s, f) for s in steps], dim) for f in fields]


def _ce_per_step(log_q1: Tensor, steps: list) -> Tensor:
    """Each step's mean cross-entropy, from the joined rows' log-softmax at T = 1."""
    y = torch.cat([s.target for s in steps])
    return F.nll_loss(log_q1, y, reduction="none").view(len(steps), -1).mean(1)


def _one_by_one(cls, steps: list[StepValues]) -> dict[str, Tensor]:
    """Steps that cannot share one computation (a batch of another size, a new T): each alone."""
    each = [cls.evaluate([s]) for s in steps]
    return {k: torch.cat([e[k] for e in each]) for k in each[0]}
