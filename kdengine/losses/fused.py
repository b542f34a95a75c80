"""Cheaper KD losses: the same values as :mod:`kdengine.losses.logits`, with fewer operations.

On the small models this app trains, a step is dominated by per-operation overhead, not arithmetic.
Everything on the teacher's side (log-probabilities, KD's scaled probabilities and constant, DKD's
per-sample matrix and constants) is computed once per run and temperature from the cached teacher
logits (:class:`TeacherCache`), so a step does only the student's half: Hinton KD + CE costs a
log-softmax and a dot product beside CE (sharing the log-softmax at T = 1); DKD, whose plain form is
some thirty small operations with as many autograd nodes, is one ``autograd.Function`` of two
log-softmaxes and one ``addmm`` (:func:`dkd_teacher_tables` has the algebra). Each term keeps its
T^2 (Hinton 2015), as the plain losses do. tests/test_fused_losses.py checks values and gradients
against the plain formulas.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class TeacherCache:
    """A teacher's logits over the whole transfer set, on the device, and tables derived from them at
    each temperature asked for (computed on first use; a new T computes a new entry): the
    log-probabilities (KD), and DKD's teacher side when the set's labels are given (``labels``, with
    ``labeled`` marking the samples whose label may be used; the others' target is the teacher's
    argmax, as in :class:`kdengine.methods.dkd.DKD`)."""

    def __init__(self, logits: Tensor, labels: Tensor | None = None, labeled: Tensor | None = None):
        self.logits = logits
        self.labels, self.labeled = labels, labeled
        self._tables: dict[tuple, Any] = {}

    def log_probs(self, T: float) -> Tensor:
        return _memo(self._tables, ("log_probs", float(T)),
                     lambda: F.log_softmax(_float(self.logits) / T, dim=-1))

    def kd_tables(self, T: float, factor: float) -> tuple[Tensor, Tensor]:
        """:func:`kd_teacher_tables` over the set at T."""
        return _memo(self._tables, ("kd", float(T), factor),
                     lambda: kd_teacher_tables(self.log_probs(T), factor))

    def kd_step_table(self, T: float, factor: float, w_kd: float, w_ce_b: float) -> Tensor | None:
        """All a closed-form KD + CE step reads (kdengine/losses/closed_form.py), class-major in one
        ``[2C + 1, N]`` table, so that an epoch's order is one gather and a step's rows one slice:
        rows ``:C`` hold P (``kd_tables``' ``factor * p``), rows ``C:2C`` hold
        ``G = (w_kd / T) P + w_ce_b onehot(label)``, row ``2C`` the constants. Once per run; None
        unless every sample has its label."""
        if self.labels is None or self.labeled is not None:
            return None

        def make():
            P, const = self.kd_tables(T, factor)
            G = (P * (w_kd / T)).scatter_add_(1, self.labels[:, None].long(),
                                              P.new_full((len(P), 1), w_ce_b))
            return torch.cat((P, G, const[:, None]), 1).t().contiguous()
        return _memo(self._tables, ("kd_step", float(T), factor, w_kd, w_ce_b), make)

    def dkd_tables(self, T: float) -> tuple[Tensor, Tensor, Tensor] | None:
        """:func:`dkd_teacher_tables` over the set at T; None without labels."""
        return self._dkd("dkd", T, dkd_teacher_tables)

    def dkd_step_table(self, T: float) -> tuple[Tensor, Tensor] | None:
        """:func:`dkd_step_columns` over the set at T: all a closed-form DKD step reads
        (kdengine/losses/closed_form.py), class-major; None without labels."""
        return self._dkd("dkd_step", T, dkd_step_columns)

    def _dkd(self, kind: str, T: float, build: Callable[[Tensor, Tensor], Any]) -> Any:
        """``build(log-probabilities at T, DKD's target per sample)``, once per T; None without
        labels."""
        if self.labels is None:
            return None

        def make():
            lp = self.log_probs(T)
            return build(lp, self._dkd_target(lp))
        return _memo(self._tables, (kind, float(T)), make)

    def _dkd_target(self, log_p: Tensor) -> Tensor:
        """DKD's target class per sample: its label, or the teacher's argmax where it has none."""
        return self.labels if self.labeled is None else self.labels.where(self.labeled,
                                                                          log_p.argmax(-1))

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
        self._tables: dict[tuple, Any] = {}

    def _rows(self, table: Tensor) -> Tensor:
        # index_select, not table[order]: the same rows, 3x faster on the CPU (advanced indexing
        # takes a general path)
        return table.index_select(0, self._order)

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            self._logits = self._rows(self._base.logits)
        return self._logits

    def log_probs(self, T: float) -> Tensor:
        return _memo(self._tables, ("log_probs", T), lambda: self._rows(self._base.log_probs(T)))

    def kd_tables(self, T: float, factor: float) -> tuple[Tensor, Tensor]:
        return _memo(self._tables, ("kd", T, factor),
                     lambda: tuple(map(self._rows, self._base.kd_tables(T, factor))))

    def kd_step_table(self, T: float, factor: float, w_kd: float, w_ce_b: float) -> Tensor | None:
        def make():
            table = self._base.kd_step_table(T, factor, w_kd, w_ce_b)
            return None if table is None else table.index_select(1, self._order)
        return _memo(self._tables, ("kd_step", T, factor, w_kd, w_ce_b), make)

    def dkd_tables(self, T: float) -> tuple[Tensor, Tensor, Tensor] | None:
        if self._base.labels is None:
            return None
        return _memo(self._tables, ("dkd", T),
                     lambda: tuple(map(self._rows, self._base.dkd_tables(T))))

    def dkd_step_table(self, T: float) -> tuple[Tensor, Tensor] | None:
        if self._base.labels is None:
            return None
        return _memo(self._tables, ("dkd_step", T), lambda: tuple(
            t.index_select(1, self._order) for t in self._base.dkd_step_table(T)))


def _memo(tables: dict, key: tuple, make: Callable[[], Any]) -> Any:
    """``tables[key]``, made on first use. A schedule over T asks for a new key every few steps:
    past a few entries the memo starts over, to keep the memory bounded."""
    hit = tables.get(key)
    if hit is None:
        if len(tables) >= 8:
            tables.clear()
        hit = tables[key] = make()
    return hit


def _float(z: Tensor) -> Tensor:
    """At least float32: the losses are computed there even under bf16 autocast."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def log_softmax_rows(x: Tensor) -> Tensor:
    """``x.log_softmax(-1)`` of a ``[B, C]`` batch, the same values. On the CPU with fewer than 16
    classes it is computed over the transposed ``[C, B]``: PyTorch's last-dimension CPU kernel
    loops per row when a row is shorter than its vector width, and measured 2-6x slower there (one
    thread; B=64, C=10: 9.9 us against 5.1 us; B=256: 37.8 against 6.7 us; from 16 classes on the
    usual kernel is the faster). The result may be a transposed view: read it with ``reshape``."""
    if _transposed_is_faster(x):
        return x.t().log_softmax(0).t()
    return x.log_softmax(-1)


def _transposed_is_faster(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 2 and x.shape[1] < 16 and x.numel() >= 512


def kd_teacher_tables(log_p: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    """KD's teacher side, per sample, from its log-probabilities at T: ``factor * p`` [N, C] and
    ``factor * sum p log p`` [N], so that a batch's ``factor * KL(p || q)`` summed is
    ``const.sum() - P . log q`` (a TeacherCache computes them once per run, T and factor)."""
    log_p = _float(log_p.detach())
    P = log_p.exp().mul_(factor)
    return P, (P * log_p).sum(1)


def kd_ce_terms(student_logits: Tensor, teacher_log_probs: Tensor | None, target: Tensor | None,
                T: float, scale: float | None = None, labeled: Tensor | None = None,
                tables: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(kd, ce)``: ``scale * KL(p_t || softmax(z/T))`` (batch mean; scale defaults to T^2) and the
    cross-entropy on ``target`` (0 when None), from the teacher's log-probabilities at T, or from
    ``tables``, the batch's rows of :func:`kd_teacher_tables` with ``factor = scale / B`` when cached.

    ``labeled`` (bool per sample) restricts the CE to the labelled samples, averaged over their count,
    as ``Method.hard_ce`` does. At T = 1 the two terms share the student's log-softmax.

    The KL is one dot product and a constant, ``sum c - (p * scale / B) . log q``: fewer operations
    and autograd nodes than ``F.kl_div``'s exp, sub, mul, sum and batch-mean division followed by
    the scale. (A custom autograd node for KD + CE with the closed-form gradient measured 5-6%
    slower per step on the CPU: its Python forward and backward cost more than the native nodes
    they replace.)"""
    scale = T * T if scale is None else scale
    z = _float(student_logits)
    log_q = (z if T == 1.0 else z / T).log_softmax(-1)
    if tables is None:
        tables = kd_teacher_tables(teacher_log_probs, scale / z.shape[0])
    P, const = tables
    kd = torch.sub(const.sum(), torch.vdot(P.view(-1), log_q.view(-1)))
    if target is None:
        return kd, z.new_zeros(())
    if labeled is None:
        ce = F.nll_loss(log_q, target) if T == 1.0 else F.cross_entropy(z, target)
    else:
        nll = (F.nll_loss(log_q, target, reduction="none") if T == 1.0
               else F.cross_entropy(z, target, reduction="none"))
        ce = (nll * labeled).sum() / labeled.sum().clamp_min(1)
    return kd, ce


def dkd_teacher_tables(log_p: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DKD's teacher side, per sample, from its log-probabilities at T and the target classes:
    everything a step needs that does not depend on the student (a TeacherCache computes it once
    per run and T, a batch without one per step). With X = [log q | log q'] per row (q' the
    non-target classes renormalised, 0 at the target y), a sample's ``(tckd, nckd)`` is
    ``const[:2] + X @ K``:
        tckd = p_y log p_y + (1-p_y) log(1-p_y)  - p_y log q_y - (1-p_y) log(1-q_y)
        nckd = sum p' log p'                      - sum p' log q'
    where log(1 - q_y) = log q_j - log q'_j for any j other than y (here j = y + 1 mod C), so that
    the student's side needs no log-sum-exp. Returns ``K`` [N, 2C, 2], ``const`` [N, 3] (the two
    constants and p_y) and ``is_y`` [N, C] (the target's mask)."""
    log_p = _float(log_p.detach())
    n, c = log_p.shape
    yi = target.long()[:, None]
    ji = (yi + 1) % c
    is_y = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, yi, True)
    lp_y = log_p.gather(1, yi)
    # log(1 - p_y) as the log-sum of the other classes' probabilities: finite even when p_y rounds
    # to 1 (a teacher that sure of the target)
    l1p = log_p.masked_fill(is_y, float("-inf")).logsumexp(1, keepdim=True)
    p_y, rest = lp_y.exp(), l1p.exp()
    log_pn = log_p - l1p                              # log p' off the target
    p_n = log_pn.exp().masked_fill_(is_y, 0.0)
    K = log_p.new_zeros(n, 2, c, 2)                   # [sample, (log q | log q'), class, term]
    K[:, 0, :, 0].scatter_(1, yi, -p_y).scatter_(1, ji, -rest)
    K[:, 1, :, 0].scatter_(1, ji, rest)
    K[:, 1, :, 1] = -p_n
    const = torch.stack(((p_y * lp_y + rest * l1p)[:, 0],
                         torch.where(p_n > 0, p_n * log_pn, 0.0).sum(1), p_y[:, 0]), 1)
    return K.view(n, 2 * c, 2), const, is_y


def dkd_step_columns(log_p: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """DKD's teacher side as a closed-form step reads it, class-major: a ``[C + 4, N]`` table whose
    rows are p' (the non-target classes renormalised, 0 at the target; C rows), p_y, 1 - p_y (from
    the other classes' log-sum, as in :func:`dkd_teacher_tables`), and TCKD's and NCKD's constants;
    and the target's mask ``[C, N]``."""
    K, const, is_y = dkd_teacher_tables(log_p, target)
    n = len(const)
    p_n = K.view(n, 2, -1, 2)[:, 1, :, 1].neg()
    rest = K.view(n, 2, -1, 2)[:, 1, :, 0].sum(1, keepdim=True)    # K holds 1 - p_y at one class
    table = torch.cat((p_n, const[:, 2:3], rest, const[:, :2]), 1)
    return table.t().contiguous(), is_y.t().contiguous()


class _DKD(torch.autograd.Function):
    """Only the student half runs per step: the teacher's comes as :func:`dkd_teacher_tables`.
    Forward: log q, log q' (a log-softmax of the row without its target), and one ``addmm`` for both
    terms of the whole batch. Backward: d/dX = K @ (g_t, g_n), then through the two log-softmaxes."""

    @staticmethod
    def forward(ctx, z, K, const, is_y, T):
        zf = _float(z)
        B = zf.shape[0]
        with _no_autocast(zf):                          # addmm would run in bf16 under autocast
            log_q = log_softmax_rows(zf / T)
            log_qn = log_softmax_rows(log_q.masked_fill(is_y, float("-inf")))   # -inf at y
            K, const = K.to(log_q.dtype), const.to(log_q.dtype)
            csum = const.sum(0)
            s = T * T / B                               # each term keeps its T^2, batch mean
            # log q' is -inf at y where K is 0: zeroed there, or 0 * -inf would make a NaN
            x = torch.cat((log_q, log_qn.masked_fill(is_y, 0.0)), 1)
            vals = torch.addmm(csum[:2], x.reshape(1, -1), K.view(-1, 2), beta=s, alpha=s)
        ctx.save_for_backward(log_q, log_qn, K)
        ctx.s_T, ctx.dtype = s / T, z.dtype
        p_t = csum[2] / B
        ctx.mark_non_differentiable(p_t)                # the teacher's alone: it has no gradient
        return vals[0, 0], vals[0, 1], p_t

    @staticmethod
    def backward(ctx, g_t, g_n, _g_p):
        log_q, log_qn, K = ctx.saved_tensors
        B, C = log_q.shape
        with _no_autocast(log_q):
            g_x = (K.view(-1, 2) @ torch.stack((g_t, g_n)).mul_(ctx.s_T)).view(B, 2 * C)
            g_q, g_qn = g_x.split(C, 1)                 # g_qn is 0 at y (K is)
            g_q = g_q + torch._log_softmax_backward_data(g_qn, log_qn, 1, log_q.dtype)
            grad = torch._log_softmax_backward_data(g_q, log_q, 1, log_q.dtype)
        return grad.to(ctx.dtype), None, None, None, None


def _no_autocast(z: Tensor):
    """Autocast off where it is on (a context costs microseconds a step when it is not)."""
    dev = z.device.type
    return torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext()


def dkd_fused_terms(student_logits: Tensor, teacher_log_probs: Tensor | None, target: Tensor | None,
                    T: float, tables: tuple[Tensor, Tensor, Tensor] | None = None
                    ) -> dict[str, Tensor]:
    """DKD's ``tckd`` and ``nckd`` (batch means, each times T^2) and the teacher's mean target
    probability ``p_t``, equal to :func:`kdengine.losses.logits.dkd_terms` in one autograd node.
    ``tables``: the batch's rows of :func:`dkd_teacher_tables` when cached (then the teacher's
    log-probabilities and the target are not read), else they are computed here."""
    if tables is None:
        tables = dkd_teacher_tables(teacher_log_probs, target)
    tckd, nckd, p_t = _DKD.apply(student_logits, *tables, float(T))
    return {"tckd": tckd, "nckd": nckd, "p_t": p_t}
