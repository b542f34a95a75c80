"""Pure functional distillation losses shared by methods, tests and the explorer pages.

All losses reduce by the batch mean of a per-sample sum over classes (``KL(..., 'batchmean')``);
PyTorch's ``KLDivLoss(reduction='mean')`` would also divide by the class count, a common bug.

Stacked students (:mod:`kdengine.run.stacked`): student logits may carry a leading
student axis, ``[S, B, C]``, against teacher logits ``[B, C]``; a knob such as T may then be a
tensor ``[S, 1, 1]``, one value per student. Every loss here then returns one value per student,
``[S]``, each equal to the loss that student would get alone: the formulas are written over the last
two axes (classes, batch), so one code path serves both shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-12


def per_student(knob):
    """A knob that broadcasts against stacked logits (``[S, 1, 1]``) as a factor on per-student
    losses (``[S]``); a plain number is returned unchanged."""
    return knob.reshape(knob.shape[:-2]) if isinstance(knob, Tensor) and knob.dim() > 2 else knob


def soften(logits: Tensor, T: float) -> Tensor:
    """Softmax at temperature T: q_i = exp(z_i/T) / sum_j exp(z_j/T)."""
    return F.softmax(logits / T, dim=-1)


def kl_div(p_log_target: Tensor, q_log: Tensor) -> Tensor:
    """Per-sample KL(p || q) from log-probabilities, summed over classes."""
    return (p_log_target.exp() * (p_log_target - q_log)).sum(-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The T^2 factor keeps the soft-target gradient magnitude independent of T (Hinton et al. 2015)."""
    return kd_loss_unscaled(student_logits, teacher_logits, T) * per_student(T * T)


def kd_loss_unscaled(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` without the T^2 factor, batch mean."""
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    return kl_div(log_p_t, log_p_s).mean(-1)        # sum over classes, mean over the batch


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Ba & Caruana 2014 logit regression: mean over samples of the squared logit distance / classes."""
    return (student_logits - teacher_logits.detach()).pow(2).mean((-2, -1))


def _binary_kl(p_t: Tensor, p_s: Tensor) -> Tensor:
    """KL between per-sample Bernoulli distributions [p, 1-p]."""
    p_t = p_t.clamp(_EPS, 1 - _EPS)
    p_s = p_s.clamp(_EPS, 1 - _EPS)
    return p_t * (p_t.log() - p_s.log()) + (1 - p_t) * ((1 - p_t).log() - (1 - p_s).log())


def dkd_per_sample(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float) -> dict:
    """Per-sample TCKD, NCKD (both without T^2) and the teacher's target probability p_t at T.

    TCKD = KL over [p_target, 1 - p_target]; NCKD = KL over the non-target classes renormalised
    (Zhao et al., CVPR 2022). Identity: KL = TCKD + (1 - p_t) * NCKD."""
    t = teacher_logits.detach()
    gt = F.one_hot(target.long(), student_logits.shape[-1]).bool()
    p_t = soften(t, T)
    p_s = soften(student_logits, T)
    # the target class's probability; a masked sum (not p[gt]: a host sync per step on CUDA) so a leading student axis broadcasts
    pt_target = (p_t * gt).sum(-1)
    ps_target = (p_s * gt).sum(-1)
    tckd = _binary_kl(pt_target, ps_target)
    # Non-target distributions: mask the target logit with a large negative number, then softmax.
    neg = torch.finfo(student_logits.dtype).min / 4
    log_q_t = F.log_softmax(t.masked_fill(gt, neg) / T, dim=-1)
    log_q_s = F.log_softmax(student_logits.masked_fill(gt, neg) / T, dim=-1)
    q_t = log_q_t.exp()
    nckd = (q_t * (log_q_t - log_q_s)).masked_fill(gt, 0.0).sum(-1)
    return {"tckd": tckd, "nckd": nckd, "p_t": pt_target}


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float) -> dict:
    """Unweighted batch-mean TCKD and NCKD (each times T^2), plus the mean teacher target prob."""
    per = dkd_per_sample(student_logits, teacher_logits, target, T)
    t_sq = per_student(T * T)
    return {"tckd": per["tckd"].mean(-1) * t_sq, "nckd": per["nckd"].mean(-1) * t_sq,
            "p_t": per["p_t"].mean(-1)}


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float,
             beta: float, T: float) -> Tensor:
    """DKD: ``alpha * TCKD + beta * NCKD``, each with its T^2, batch mean."""
    terms = dkd_terms(student_logits, teacher_logits, target, T)
    return alpha * terms["tckd"] + beta * terms["nckd"]


def entropy(probs: Tensor) -> Tensor:
    return -(probs * (probs.clamp_min(_EPS)).log()).sum(-1)
