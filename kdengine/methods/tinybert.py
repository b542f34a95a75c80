"""TinyBERT-style layer-to-layer distillation (Jiao et al. 2020, arXiv:1909.10351).

TinyBERT maps student layer m to teacher layer g(m) = m * N / M (uniform mapping) and distils:

* ``emb``    = embed_weight * MSE(E_s W_e, E_t)            (embedding-layer distillation)
* ``hidden`` = hidden_weight * sum_m MSE(H_s^m W_h, H_t^g(m))   (hidden-state distillation)
* ``attn``   = attn_weight * sum_m mean_heads MSE(A_s^m, A_t^g(m))   (attention distillation)
* ``kd``     = pred_weight * prediction-layer KD at T (per-label binary KL for multi-label data)
* ``ce``     = hard_weight * loss on labels (TinyBERT uses none; 0 by default)

W_e, W_h are learned linear maps from student to teacher width (the extra modules); with equal
widths they start as the identity, so a student identical to its teacher has zero layer losses.
MSEs are means over real (non-pad) tokens. Attention maps are, by default, the raw pre-softmax scores
q.k/sqrt(d), as in the paper (Eq. 3 uses the attention matrix before softmax) and its official code;
``attention = "probs"`` compares the softmax probabilities instead (what Hugging Face's
``output_attentions`` returns, and the only choice for a Hugging Face model, which falls back to it
with a notice). When head counts differ the head-averaged maps are compared. ``two_stage`` follows the paper's schedule: first
half of training the intermediate layers only, second half the prediction layer only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.methods.base import register
from kdengine.methods.distilbert import TransformerMethod, soft_loss, width_of


@dataclass
class TinyBertParams:
    T: float = temperature_knob(1.0, help="Temperature of the prediction-layer loss (TinyBERT used 1).")
    attn_weight: float = weight_knob(1.0, "attention weight", step=0.1)
    hidden_weight: float = weight_knob(1.0, "hidden-state weight", step=0.1)
    embed_weight: float = weight_knob(1.0, "embedding weight", step=0.1)
    pred_weight: float = weight_knob(1.0, "prediction weight",
                                     "Weight of the soft-target loss on the outputs.", step=0.1)
    hard_weight: float = weight_knob(0.0, "hard weight",
                                     "Weight of the loss on true labels (TinyBERT: 0).", step=0.1)
    attention: str = param("scores", choices=("scores", "probs"), label="attention compared",
                           help="scores: raw pre-softmax attention scores (the paper and its code); "
                                "probs: the softmax probabilities.")
    two_stage: bool = param(False, label="two stages",
                            help="First half: intermediate layers only; second half: prediction "
                                 "layer only (the paper's schedule).")


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """MSE over real tokens: a, b [B, L, D], mask [B, L]."""
    m = mask.to(a.dtype)[..., None]
    return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp_min(1)


def attention_mse(a_s: Tensor, a_t: Tensor, mask: Tensor) -> Tensor:
    """MSE between attention maps [B, H, L, L] over (query, key) pairs of real tokens, averaged over
    heads; head-averaged maps when the head counts differ."""
    if a_s.shape[1] != a_t.shape[1]:
        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    m = mask.to(a_s.dtype)
    pair = (m[:, :, None] * m[:, None, :])[:, None]          # [B, 1, L, L]
    return (((a_s - a_t) ** 2) * pair).sum() / (pair.sum() * a_s.shape[1]).clamp_min(1)


def projection(ws: int, wt: int) -> nn.Linear:
    lin = nn.Linear(ws, wt, bias=False)
    if ws == wt:
        with torch.no_grad():
            lin.weight.copy_(torch.eye(ws))
    return lin


@register
class TinyBert(TransformerMethod):
    name = "tinybert"
    supports_multilabel = True
    Params = TinyBertParams
    title = "TinyBERT (attention, hidden-state and prediction-layer distillation)"
    paper = "Jiao et al. 2020, arXiv:1909.10351"
    formula = (r"w_{emb}\,MSE(E_s W_e, E_t) + w_{hidden}\textstyle\sum_m MSE(H_s^m W_h, H_t^{g(m)}) + "
               r"w_{attn}\textstyle\sum_m MSE(A_s^m, A_t^{g(m)}) + w_{pred}\,KD_T + w_{hard}\,CE")
    weight_knobs = {"emb": "embed_weight", "hidden": "hidden_weight", "attn": "attn_weight",
                    "kd": "pred_weight", "ce": "hard_weight"}
    temperature = "T"

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        ws, wt = width_of(student), width_of(self.teachers[0])
        self.w_e = projection(ws, wt)
        self.w_h = projection(ws, wt)

    def extra_modules(self):
        return [self.w_e, self.w_h]

    def _attention_maps(self, fs, ft):
        """The student's and teacher's per-layer maps to compare: raw scores when asked for and
        both models expose them, else probabilities (said once, in a notice)."""
        if self.params.attention == "scores":
            if fs.scores is not None and ft.scores is not None:
                return fs.scores, ft.scores
            if not getattr(self, "_said_probs", False):
                self._said_probs = True
                self.notice("TinyBERT: a model here exposes attention probabilities only; "
                            "comparing probabilities instead of raw scores.")
        return fs.attentions, ft.attentions

    def loss_terms(self, batch, step):
        from kdengine.models.transformer import layer_map
        p = self.params
        fs = self.student_features(batch.x)
        ft = self.teacher_features(batch.x)
        stage = 0 if not p.two_stage else (1 if self.progress(step) < 0.5 else 2)
        terms = {}
        if stage in (0, 1):
            mask = fs.mask
            mapping = layer_map(len(fs.attentions), len(ft.attentions))
            if self.wants("emb"):
                terms["emb"] = masked_mse(self.w_e(fs.hidden[0]), ft.hidden[0].float(), mask)
            if self.wants("hidden"):
                terms["hidden"] = sum(
                    masked_mse(self.w_h(fs.hidden[m]), ft.hidden[g].float(), mask)
                    for m, g in enumerate(mapping, start=1))
            if self.wants("attn"):
                a_s, a_t = self._attention_maps(fs, ft)
                terms["attn"] = sum(attention_mse(a_s[m - 1], a_t[g - 1].float(), mask)
                                    for m, g in enumerate(mapping, start=1))
        if stage in (0, 2):
            terms["kd"] = soft_loss(fs.logits, ft.logits.float(), batch.y, p.T)
            if self.wants("ce"):
                terms["ce"] = self.hard_ce(fs.logits, batch)
        if stage == 1:   # the prediction layer is off in stage 1: chart it as 0 (and never sum [])
            terms["kd"] = fs.logits.sum() * 0.0
        return terms
