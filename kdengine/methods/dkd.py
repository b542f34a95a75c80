"""Decoupled KD (Zhao et al., CVPR 2022, arXiv:2203.08679).

KD splits into a target-class part (TCKD, binary KL over [p_target, rest]) and a non-target part
(NCKD, KL over the renormalised non-target classes): KD = TCKD + (1 - p_t) * NCKD. DKD weights them
independently: ce_weight * CE + warmup * (alpha * TCKD + beta * NCKD), T^2 on each.
Reference defaults: alpha 1, beta 8, T 4, linear warm-up over 20 epochs (authors' mdistiller, of
240-epoch runs); here the warm-up is also capped at a share of the run (``warmup_cap``, 25%), since
20 epochs is as long as most runs on a CPU.
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
                                 help="Epochs over which the KD part ramps linearly from 0 to 1 "
                                      "(the paper: 20 of 240), at most the warm-up cap.")
    warmup_cap: float = param(0.25, min=0.0, max=1.0, step=0.05, label="warm-up cap",
                              help="Longest warm-up as a share of the run: 20 epochs would be a "
                                   "whole run here, and the KD part would never reach full weight.")


def warmup_epochs(p: DKDParams, run_epochs: float) -> float:
    """The warm-up actually used: ``warmup_epochs``, clamped to ``warmup_cap`` of the run."""
    return min(p.warmup_epochs, p.warmup_cap * run_epochs)


@register
class DKD(Method):
    name = "dkd"
    Params = DKDParams
    title = "Decoupled KD (TCKD + NCKD)"
    paper = "Zhao et al. 2022, arXiv:2203.08679"
    formula = (r"w_{ce}\,CE(y, s) + \lambda(e)\,T^2\,\big(\alpha\,TCKD + "
               r"\beta\,NCKD\big),\quad \lambda(e) = \min(1,\ e / e_{warm})")
    weight_knobs = {"tckd": "alpha", "nckd": "beta", "ce": "ce_weight"}
    temperature = "T"
    supports_stacking = True      # dkd_terms broadcasts over stacked students' logits [S, B, C]
    stack_knobs = ("T",)

    def loss_terms(self, batch, step):
        s, t = self.student(batch.x), self.teacher_logits(batch)
        # DKD needs a target class; on an unlabelled sample the teacher's top class stands in
        target = batch.y.where(batch.labeled, t.argmax(-1))
        d = dkd_terms(s, t, target, self.params.T)      # TCKD and NCKD, each with its T^2
        span = warmup_epochs(self.params, self.ctx.epochs)
        warm = 1.0 if span <= 0 else min(1.0, self.ctx.epoch_of(step) / span)   # linear warm-up
        return self.with_hard_ce({"tckd": warm * d["tckd"], "nckd": warm * d["nckd"]}, s, batch)
