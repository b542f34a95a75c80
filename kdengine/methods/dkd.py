"""Decoupled KD (Zhao et al., CVPR 2022, arXiv:2203.08679).

KD splits into a target-class part (TCKD, binary KL over [p_target, rest]) and a non-target part
(NCKD, KL over the renormalised non-target classes): KD = TCKD + (1 - p_t) * NCKD. DKD weights them
independently: ce_weight * CE + warmup * (alpha * TCKD + beta * NCKD), T^2 on each.
Reference defaults: alpha 1, beta 8, T 4, linear warm-up over 20 epochs (authors' mdistiller).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.losses.logits import dkd_terms
from kdengine.methods.base import Method, register


@dataclass
class DKDParams:
    alpha: float = weight_knob(1.0, help="Weight of TCKD.", step=0.1)
    beta: float = weight_knob(8.0, help="Weight of NCKD.", step=0.5)
    T: float = temperature_knob(4.0)
    ce_weight: float = weight_knob(1.0, "hard (CE) weight", step=0.1)
    warmup_epochs: float = param(20.0, min=0.0, max=10_000.0,
                                 help="Epochs over which the KD part ramps linearly from 0 to 1.")


@register
class DKD(Method):
    name = "dkd"
    Params = DKDParams
    title = "Decoupled KD (TCKD + NCKD)"
    paper = "Zhao et al. 2022, arXiv:2203.08679"
    weight_knobs = {"tckd": "alpha", "nckd": "beta", "ce": "ce_weight"}
    temperature = "T"

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        t = self.teacher_logits(batch)
        warm = 1.0 if p.warmup_epochs <= 0 else min(1.0, self.ctx.epoch_of(step) / p.warmup_epochs)
        # DKD needs a target class; on unlabelled samples the teacher's argmax stands in for it.
        target = batch.y.where(batch.labeled, t.argmax(-1))
        d = dkd_terms(s, t, target, p.T)
        terms = {"tckd": warm * d["tckd"], "nckd": warm * d["nckd"]}
        if self.wants("ce"):
            terms["ce"] = self.hard_ce(s, batch)
        return terms
