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
Both run class-major, on ``[C, B]`` (the logits transposed once): PyTorch's CPU softmax over the last
dimension loops per row below 16 classes, over dim 0 of a contiguous tensor it is vectorised (3-4x
faster at C = 10), and a log window's values then join the steps' columns in one copy. The teacher's
side is one class-major table per run and T (``TeacherCache.kd_step_table`` / ``dkd_step_table``),
put in each epoch's order once and sliced per step.
tests/test_fused_losses.py checks values and parameter gradients against the losses' graphs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdengine.losses.deferred import DeferredTerm, StepValues
from kdengine.losses.fused import _float


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
            out["ce"] = _ce_per_step(log_q if T == 1.0 else z.log_softmax(0), steps)
        return out


# -- DKD + CE --------------------------------------------------------------------------------------
def dkd_step(student_logits: Tensor, table: Tensor, is_y: Tensor, T: float, w_t: float, w_n: float,
             warm: float = 1.0, target: Tensor | None = None, w_ce: float = 0.0
             ) -> tuple[dict[str, DeferredTerm], Tensor]:
    """``(terms, grad)``: ``tckd`` and ``nckd`` times ``warm`` (and ``ce`` when a target is given),
    deferred, with the values of :func:`kdengine.losses.fused.dkd_fused_terms`, and the gradient of
    ``warm * (w_t * tckd + w_n * nckd) + w_ce * ce`` with respect to the logits. ``table``, ``is_y``:
    the batch's columns of ``TeacherCache.dkd_step_table`` (:func:`~kdengine.losses.fused.
    dkd_step_columns`); a CE target, when given, is the table's target class (every label known).
    Class-major, as :func:`kd_ce_step`."""
    z = _float(student_logits.detach())
    B, C = z.shape
    zt = z.t().contiguous()
    s = zt if T == 1.0 else zt * (1.0 / T)
    wt, wn = w_t * warm * T / B, w_n * warm * T / B         # d/dz = (T^2 / B) (1 / T) d/ds
    d = table[C:C + 1] - torch.where(is_y, s.softmax(0), 0.0).sum(0, keepdim=True)   # p_y - q_y
    grad = s.masked_fill(is_y, float("-inf")).softmax(0)    # q', 0 at y
    grad.mul_(d.mul(wt).add_(wn)).sub_(table[:C], alpha=wn)  # off y: q' (w_t d + w_n) - w_n p'
    c = w_ce / B if target is not None else 0.0             # CE: c (softmax(z) - onehot(y))
    grad = torch.where(is_y, d.mul(-wt).sub_(c), grad)      # at y: w_t (q_y - p_y) - c
    if c != 0.0:
        grad.add_(zt.softmax(0), alpha=c)
    values = DKDValues(zt, table, is_y, T, warm, target)
    return values.terms(), grad.t().to(student_logits.dtype)


class DKDValues(StepValues):
    """One DKD step's ``tckd``, ``nckd`` (times the warm-up) and ``ce`` values, from its class-major
    detached logits ``z`` (``[C, B]``) and teacher columns (:func:`dkd_step`)."""

    def __init__(self, z: Tensor, table: Tensor, is_y: Tensor, T: float, warm: float,
                 target: Tensor | None):
        self.z, self.table, self.is_y, self.T = z, table, is_y, T
        self.warm, self.target = warm, target
        self.names = ("tckd", "nckd") if target is None else ("tckd", "nckd", "ce")

    @classmethod
    def evaluate(cls, steps: list["DKDValues"]) -> dict[str, Tensor]:
        if not _alike(steps):
            return _one_by_one(cls, steps)
        first, n, T = steps[0], len(steps), steps[0].T
        z, table, is_y = _joined(steps, "z", "table", "is_y", dim=1)     # [C or C + 4, n B]
        C = z.shape[0]
        # per sample, with log(1 - q_y) as the other classes' log-sum (finite when q_y rounds to 1)
        # and log q' = log q - log(1 - q_y) off the target (p' sums to 1):
        #   tckd = p_y log p_y + (1-p_y) log(1-p_y) - p_y log q_y - (1-p_y) log(1-q_y)
        #   nckd = sum p' log p' - sum p' log q + log(1 - q_y)
        log_q = (z if T == 1.0 else z * (1.0 / T)).log_softmax(0)
        log_rest = log_q.masked_fill(is_y, float("-inf")).logsumexp(0)
        tckd = table[C + 2] - table[C] * torch.where(is_y, log_q, 0.0).sum(0) - table[C + 1] * log_rest
        nckd = table[C + 3] - (table[:C] * log_q).sum(0) + log_rest
        vals = torch.stack((tckd, nckd)).view(2, n, -1).sum(2) * (T * T / first.z.shape[1])
        if any(s.warm != 1.0 for s in steps):
            vals = vals * vals.new_tensor([s.warm for s in steps])
        out = {"tckd": vals[0], "nckd": vals[1]}
        if first.target is not None:
            out["ce"] = _ce_per_step(log_q if T == 1.0 else z.log_softmax(0), steps)
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
    """Each step's mean cross-entropy, from the joined class-major log-softmax at T = 1 (``[C, n B]``)."""
    y = torch.cat([s.target for s in steps]).view(1, -1).long()
    return log_q1.gather(0, y).view(len(steps), -1).mean(1).neg()


def _one_by_one(cls, steps: list[StepValues]) -> dict[str, Tensor]:
    """Steps that cannot share one computation (a batch of another size, a new T): each alone."""
    each = [cls.evaluate([s]) for s in steps]
    return {k: torch.cat([e[k] for e in each]) for k in each[0]}
