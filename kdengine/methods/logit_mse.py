"""Logit regression (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"): L2 between logits."""
from __future__ import annotations

from dataclasses import dataclass

from kdengine.losses.logits import logit_mse
from kdengine.core.knobs import param
from kdengine.methods.base import Method, register


@dataclass
class LogitMSEParams:
    mse_weight: float = param(1.0, min=0.0, max=100.0, step=0.1, label="MSE weight")
    hard_weight: float = param(0.0, min=0.0, max=100.0, step=0.05, label="hard weight")


@register
class LogitMSE(Method):
    name = "logit_mse"
    supports_multilabel = True
    Params = LogitMSEParams
    title = "Logit regression (MSE)"
    paper = "Ba & Caruana 2014, arXiv:1312.6184"
    term_names = ("mse", "ce")

    def loss_terms(self, batch, step):
        s = self.student(batch.x)
        terms = {"mse": self.params.mse_weight * logit_mse(s, self.teacher_logits(batch))}
        if self.params.hard_weight > 0:
            terms["ce"] = self.params.hard_weight * self.hard_ce(s, batch)
        return terms
