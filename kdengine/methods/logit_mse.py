"""Logit regression (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"): L2 between logits."""
from __future__ import annotations

from dataclasses import dataclass

from kdengine.core.knobs import weight_knob
from kdengine.losses.logits import logit_mse
from kdengine.methods.base import Method, register


@dataclass
class LogitMSEParams:
    mse_weight: float = weight_knob(1.0, "MSE weight", step=0.1)
    hard_weight: float = weight_knob(0.0, "hard weight")


@register
class LogitMSE(Method):
    name = "logit_mse"
    supports_multilabel = True
    Params = LogitMSEParams
    title = "Logit regression (MSE)"
    paper = "Ba & Caruana 2014, arXiv:1312.6184"
    formula = r"w_{mse}\,\tfrac{1}{C}\lVert s - t \rVert^2 + w_{hard}\,CE(y, s)"
    weight_knobs = {"mse": "mse_weight", "ce": "hard_weight"}
    supports_stacking = True

    def loss_terms(self, batch, step):
        s = self.student(batch.x)
        terms = {"mse": logit_mse(s, self.teacher_logits(batch))}
        return self.with_hard_ce(terms, s, batch)
