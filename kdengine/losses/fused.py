"""Cheaper KD losses: the same values as :mod:`kdengine.losses.logits`, with fewer operations.

On the small models this app trains, a step is dominated by per-operation overhead, not arithmetic.
The teacher side comes in as log-probabilities at T, computed once per run and temperature from the
cached teacher logits (:class:`TeacherCache`), so a step no longer recomputes the teacher's softmax.
Hinton KD + CE then costs a log-softmax and a KL kernel (sharing the log-softmax with CE at T = 1);
DKD, whose plain form is some thirty small operations with as many autograd nodes, is one
``autograd.Function`` with the closed-form gradient (s = z / T, q = softmax(s), p = the teacher's
probabilities at T, ' = renormalised without the target y):
    d TCKD / dz  = (q_y - p_y) / (1 - q_y) * (e_y - q) / T       (binary KL on [p_y, 1 - p_y])
    d NCKD / dz  = (q' - p') / T, zero at y
Each term keeps its T^2 (Hinton 2015), as the plain losses do. tests/test_fused_losses.py checks
values and gradients against the plain formulas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TeacherCache:
    """A teacher's logits over the whole transfer set, on the device, and its log-probabilities at
    each temperature asked for (computed on first use; a new T computes a new entry)."""

    def __init__(self, logits: Tensor):
        self.logits = logits
        self._log_probs: dict[float, Tensor] = {}

    def log_probs(self, T: float) -> Tensor:
        T = float(T)
        lp = self._log_probs.get(T)
        if lp is None:
            if len(self._log_probs) >= 4:          # a schedule over T: keep the memory bounded
                self._log_probs.clear()
            lp = self._log_probs[T] = F.log_softmax(_float(self.logits) / T, dim=-1)
        return lp

    def in_order(self, order: Tensor) -> "OrderedTeacherCache":
        """The same tables with their rows in ``order`` (one epoch's permutation), so that a step
        reads its batch as a slice (about 1 us) instead of an index (about 10 us)."""
        return OrderedTeacherCache(self, order)


class OrderedTeacherCache:
    """A :class:`TeacherCache` read in one epoch's order: each table it is asked for is gathered
    once (from the base's, never recomputed) and then sliced per step."""

    def __init__(self, base: TeacherCache, order: Tensor):
        self._base, self._order = base, order
        self._logits: Tensor | None = None
        self._log_probs: dict[float, Tensor] = {}

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            self._logits = self._base.logits[self._order]
        return self._logits

    def log_probs(self, T: float) -> Tensor:
        lp = self._log_probs.get(T)
        if lp is None:
            if len(self._log_probs) >= 4:          # a schedule over T, as in the base
                self._log_probs.clear()
            lp = self._log_probs[T] = self._base.log_probs(T)[self._order]
        return lp


def _float(z: Tensor) -> Tensor:
    """At least float32: the losses are computed there even under bf16 autocast."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def kd_ce_terms(student_logits: Tensor, teacher_log_probs: Tensor, target: Tensor | None,
                T: float, scale: float | None = None,
                labeled: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(kd, ce)``: ``scale * KL(p_t || softmax(z/T))`` (batch mean; scale defaults to T^2) and the
    cross-entropy on ``target`` (0 when None), from the teacher's log-probabilities at T.

    ``labeled`` (bool per sample) restricts the CE to the labelled samples, averaged over their count,
    as ``Method.hard_ce`` does. At T = 1 the two terms share the student's log-softmax.

    The KL is one dot product, ``(p * scale / B) . (log p - log q)``: fewer operations and autograd
    nodes than ``F.kl_div``'s exp, sub, mul, sum and batch-mean division followed by the scale
    (about 4% of a KD step on the digits MLP). (A custom autograd node for KD + CE
    with the closed-form gradient measured 5-6% slower per step on the CPU: its Python forward and
    backward cost more than the native nodes they replace.)"""
    scale = T * T if scale is None else scale
    z = _float(student_logits)
    log_q = (z if T == 1.0 else z / T).log_softmax(-1)
    log_p = teacher_log_probs.detach()
    p_scaled = log_p.exp().mul_(scale / z.shape[0])      # the constant side: no autograd node
    kd = torch.vdot(p_scaled.reshape(-1), (log_p - log_q).reshape(-1))
    if target is None:
        return kd, z.new_zeros(())
    if labeled is None:
        ce = F.nll_loss(log_q, target) if T == 1.0 else F.cross_entropy(z, target)
    else:
        nll = (F.nll_loss(log_q, target, reduction="none") if T == 1.0
               else F.cross_entropy(z, target, reduction="none"))
        ce = (nll * labeled).sum() / labeled.sum().clamp_min(1)
    return kd, ce


class _DKD(torch.autograd.Function):
    """Teacher (index 0) and student (1) go through the same operations stacked, to halve the count;
    views come out by ``unbind`` and ``split`` (one operation for both halves, where indexing takes
    one per half)."""

    @staticmethod
    def forward(ctx, z, log_p, y, T):
        zf = _float(z)
        B = zf.shape[0]
        log_q = (zf / T).log_softmax(-1)
        log_p = log_p.to(log_q.dtype)
        both = torch.stack((log_p, log_q))                                   # [2, B, C]
        yi = y[:, None]
        is_y = torch.zeros_like(log_q, dtype=torch.bool).scatter_(1, yi, True)
        # log target probability, and log(1 - it) as the log-sum of the other classes' (finite
        # even when the target's probability rounds to 1, where 1 - p_y would be 0)
        split_p, split_q = torch.cat((both.gather(2, yi.expand(2, B, 1)),
                                      both.masked_fill(is_y, float("-inf")).logsumexp(2, keepdim=True)),
                                     2).unbind()                             # [B, 2] each
        diff = split_p - split_q                         # [B, 2]: log(p_y/q_y), log((1-p_y)/(1-q_y))
        p_bin = split_p.exp()                            # [B, 2]: p_y, 1 - p_y
        tckd = (p_bin * diff).sum()                      # binary KL on [p_y, 1 - p_y]
        # non-target distributions renormalised, p'_j = p_j / (1 - p_y) off the target; as p' sums
        # to 1 per row, sum p' (log p' - log q') = p' . (log p - log q) - log((1-p_y)/(1-q_y))
        p_n = (log_p - split_p.narrow(1, 1, 1)).exp().masked_fill_(is_y, 0.0)
        nckd = torch.vdot(p_n.reshape(-1), (log_p - log_q).reshape(-1)) - diff.select(1, 1).sum()
        ctx.save_for_backward(log_q, p_n, yi, p_bin, split_q)
        ctx.T, ctx.dtype, ctx.B = T, z.dtype, B
        s = T * T / B
        p_t = p_bin.select(1, 0).mean()
        ctx.mark_non_differentiable(p_t)        # the teacher's alone: it has no gradient
        return tckd * s, nckd * s, p_t

    @staticmethod
    def backward(ctx, g_t, g_n, _g_p):
        log_q, p_n, yi, p_bin, split_q = ctx.saved_tensors
        q_y, q_rest = split_q.exp().split(1, 1)                     # [B, 1] each: q_y, 1 - q_y
        # TCKD: (e_y - q) * k with k = (q_y - p_y) / (1 - q_y); NCKD: q / (1 - q_y) - p' off the
        # target, 0 at it. Together, off the target: q * (g_n / (1 - q_y) - k g_t) - p' g_n; at the
        # target: (1 - q_y) k g_t (p' is 0 there).
        k_t = (q_y - p_bin.narrow(1, 0, 1)) / q_rest * g_t
        grad = log_q.exp().mul_(g_n / q_rest - k_t).addcmul_(p_n, g_n, value=-1.0)
        grad.scatter_(1, yi, q_rest * k_t)
        return grad.mul_(ctx.T / ctx.B).to(ctx.dtype), None, None, None


def dkd_fused_terms(student_logits: Tensor, teacher_log_probs: Tensor, target: Tensor,
                    T: float) -> dict[str, Tensor]:
    """DKD's ``tckd`` and ``nckd`` (batch means, each times T^2) and the teacher's mean target
    probability ``p_t``, equal to :func:`kdengine.losses.logits.dkd_terms` in one autograd node."""
    tckd, nckd, p_t = _DKD.apply(student_logits, teacher_log_probs.detach(), target.long(),
                                 float(T))
    return {"tckd": tckd, "nckd": nckd, "p_t": p_t}
