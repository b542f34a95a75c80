"""Hinton KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

loss = hard_weight * CE(y, s) + soft_weight * T^2 * KL(softmax(t/T) || softmax(s/T)).
The weights are named explicitly because libraries disagree on what a single ``alpha`` means.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.losses.closed_form import columns, kd_ce_step
from kdengine.losses.fused import kd_ce_terms
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
    supports_multilabel = True
    weight_knobs = {"kd": "soft_weight", "ce": "hard_weight"}
    temperature = "T"
    supports_stacking = True
    stack_knobs = ("T",)

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        if batch.y.dim() == 2:   # multi-hot labels (text): per-label sigmoid targets at T
            terms = {"kd": multilabel_kd_loss(s, self.teacher_logits(batch), p.T, p.t_squared)}
            return self.with_hard_ce(terms, s, batch)
        if s.dim() == 3:         # stacked students [S, B, C] with per-student T: broadcasting losses
            return self._logit_terms(s, batch)
        # KD and CE from the teacher's cached log-probabilities at T (no teacher softmax per step);
        # the same values as kd_loss (or kd_loss_unscaled) and hard_ce (tests/test_fused_losses.py).
        want_ce = self.wants("ce")
        tables = self._cached_tables(batch, s.shape[0])
        teacher = self.teacher_log_probs(batch, p.T) if tables is None else None
        kd, ce = kd_ce_terms(s, teacher, (batch.y if batch.all_labeled else batch.y.clamp_min(0))
                             if want_ce else None, p.T, scale=self._scale(),
                             labeled=None if batch.all_labeled else batch.labeled, tables=tables)
        return {"kd": kd, "ce": ce} if want_ce else {"kd": kd}

    def _logit_terms(self, s, batch):
        """KD and CE from the teacher's logits, broadcasting over stacked students' ``[S, B, C]``."""
        p, t = self.params, self.teacher_logits(batch)
        terms = {"kd": kd_loss(s, t, p.T) if p.t_squared else kd_loss_unscaled(s, t, p.T)}
        return self.with_hard_ce(terms, s, batch)

    def step_loss(self, batch, step):
        """With the teacher's side cached, single-label classes and every label known: the gradient
        of KD + CE's weighted sum in closed form, no autograd graph for the loss, and the values
        deferred to the log window (kdengine/losses/closed_form.py). Otherwise the default."""
        weights = self.plain_weights("kd", "ce")
        cache = batch.teacher_cache
        if cache is None or batch.y.dim() != 1 or weights is None:
            return super().step_loss(batch, step)
        w_kd, w_ce = weights if self.wants("ce") else (weights[0], 0.0)
        n = len(batch.y)
        table = cache[0].kd_step_table(self.params.T, self._scale() / n, w_kd, w_ce / n)
        if table is None:       # some samples have no label: the graph, with its mask
            return super().step_loss(batch, step)
        s = self.student(batch.x)
        terms, grad = kd_ce_step(s, columns(table, batch.cache_rows), batch.y if w_ce else None,
                                 self.params.T, self._scale(), w_kd, w_ce)
        return terms, s, grad

    def _scale(self) -> float:
        return self.params.T ** 2 if self.params.t_squared else 1.0

    def _cached_tables(self, batch, n: int):
        """The batch's rows of the teacher's KD tables (kdengine/losses/fused.py, factor scale / n),
        when the trainer cached the teacher; else None."""
        cache = batch.teacher_cache
        if cache is None:
            return None
        rows = batch.cache_rows
        return [t[rows] for t in cache[0].kd_tables(self.params.T, self._scale() / n)]
