"""Hinton KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

loss = hard_weight * CE(y, s) + soft_weight * T^2 * KL(softmax(t/T) || softmax(s/T)).
The weights are named explicitly because libraries disagree on what a single ``alpha`` means.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.losses.logits import kd_loss, kd_loss_unscaled
from kdengine.losses.multilabel import multilabel_kd_loss
from kdengine.methods.base import Method, register


@dataclass
class HintonParams:
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight", "Weight of the soft-target (KL) term.")
    hard_weight: float = weight_knob(0.1, "hard weight", "Weight of the cross-entropy on true labels.")
    t_squared: bool = param(True, label="multiply soft term by T²",
                            help="Keeps soft-gradient size constant as T changes (Hinton 2015).")


@register
class HintonKD(Method):
    name = "hinton"
    Params = HintonParams
    title = "Hinton KD (soft targets at temperature T)"
    paper = "Hinton, Vinyals, Dean 2015, arXiv:1503.02531"
    formula = r"w_{hard}\,CE(y, s) + w_{soft}\,T^2\,KL(\sigma(t/T)\,\|\,\sigma(s/T))"
    supports_multilabel = True
    weight_knobs = {"kd": "soft_weight", "ce": "hard_weight"}
    temperature = "T"
    supports_stacking = True      # kd_loss broadcasts over stacked students' logits [S, B, C]
    stack_knobs = ("T",)

    def loss_terms(self, batch, step):
        p = self.params
        s, t = self.student(batch.x), self.teacher_logits(batch)
        if batch.y.dim() == 2:      # multi-hot labels (text): one sigmoid per label, softened by T
            kd = multilabel_kd_loss(s, t, p.T, p.t_squared)
        else:                       # T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean
            kd = kd_loss(s, t, p.T) if p.t_squared else kd_loss_unscaled(s, t, p.T)
        return self.with_hard_ce({"kd": kd}, s, batch)
