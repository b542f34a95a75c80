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
from kdengine.losses.closed_form import columns, dkd_step
from kdengine.losses.fused import dkd_fused_terms
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
    weight_knobs = {"tckd": "alpha", "nckd": "beta", "ce": "ce_weight"}
    temperature = "T"
    supports_stacking = True
    stack_knobs = ("T",)

    def _warm(self, step: int) -> float:
        """The KD part's warm-up factor at this step (linear from 0 to 1)."""
        span = warmup_epochs(self.params, self.ctx.epochs)
        return 1.0 if span <= 0 else min(1.0, self.ctx.epoch_of(step) / span)

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        warm = self._warm(step)
        if s.dim() == 3:        # stacked students [S, B, C] with per-student T: broadcasting losses
            t = self.teacher_logits(batch)
            target = batch.y if batch.all_labeled else batch.y.where(batch.labeled, t.argmax(-1))
            d = dkd_terms(s, t, target, p.T)
        elif (tables := self._cached_tables(batch, p.T)) is not None:
            d = dkd_fused_terms(s, None, None, p.T, tables)   # the teacher's side computed per run
        else:
            log_p = self.teacher_log_probs(batch, p.T)    # cached per T when the trainer can
            # DKD needs a target class; on unlabelled samples the teacher's argmax stands in for it.
            target = batch.y if batch.all_labeled else batch.y.where(batch.labeled, log_p.argmax(-1))
            d = dkd_fused_terms(s, log_p, target, p.T)    # = dkd_terms, in one autograd node
        terms = {"tckd": d["tckd"], "nckd": d["nckd"]}
        if warm < 1.0:
            terms = {k: warm * v for k, v in terms.items()}
        return self.with_hard_ce(terms, s, batch)

    def step_loss(self, batch, step):
        """With the teacher's tables cached and every label known (or no CE): the gradient of the
        weighted sum in closed form, no autograd graph for the loss, and the values deferred to the
        log window (kdengine/losses/closed_form.py). Otherwise the default."""
        weights = self.plain_weights("tckd", "nckd", "ce")
        cache = batch.teacher_cache
        tables = None if weights is None or cache is None else cache[0].dkd_step_table(self.params.T)
        want_ce = self.wants("ce")
        if tables is None or not (batch.all_labeled or not want_ce):
            return super().step_loss(batch, step)
        s = self.student(batch.x)
        w_t, w_n, w_ce = weights
        table, is_y = (columns(t, batch.cache_rows) for t in tables)
        terms, grad = dkd_step(s, table, is_y, self.params.T, w_t, w_n, self._warm(step),
                               batch.y if want_ce else None, w_ce)
        return terms, s, grad

    @staticmethod
    def _cached_tables(batch, T):
        """The batch's rows of the teacher's DKD tables (kdengine/losses/fused.py), when the trainer
        cached them with the transfer set's labels; else None."""
        cache = batch.teacher_cache
        tables = None if cache is None else cache[0].dkd_tables(T)
        if tables is None:
            return None
        rows = batch.cache_rows
        return tuple(t[rows] for t in tables)
