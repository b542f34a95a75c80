"""DistilBERT-style distillation (Sanh, Debut, Chaumond, Wolf 2019, arXiv:1910.01108).

DistilBERT trains a 6-layer student from 12-layer BERT with three losses: a soft-target loss at
temperature T on the teacher's output distribution, the hard (masked-LM) loss, and a cosine loss that
aligns the directions of the student's and teacher's last hidden states; the student starts from the
teacher's embeddings and one layer in two. Here the task is multi-label classification, so:

* ``kd``  = soft_weight * T^2 * binary KL per label between sigmoid(t/T) and sigmoid(s/T)
  (Hinton's softmax KL when the data is single-label);
* ``ce``  = hard_weight * BCE with the labels (CE for single-label data);
* ``cos`` = cos_weight * mean over real tokens of 1 - cos(h_s, h_t) on the last hidden states
  (a learned linear map from student to teacher width when the widths differ; DistilBERT keeps them
  equal).

No MLM term: the text task is classification, not pre-training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.losses.logits import kd_loss
from kdengine.losses.multilabel import is_multilabel, multilabel_kd_loss
from kdengine.core.knobs import param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register


@dataclass
class DistilBertParams:
    T: float = temperature_knob(2.0, help="Temperature of the soft targets (DistilBERT used 2).")
    soft_weight: float = weight_knob(1.0, "soft weight", "Weight of the soft-target loss at T.",
                                     step=0.1)
    hard_weight: float = weight_knob(0.5, "hard weight", "Weight of the loss on true labels.",
                                     step=0.1)
    cos_weight: float = weight_knob(1.0, "cosine weight",
                                    "Weight of the cosine loss between last hidden states.", step=0.1)
    init_from_teacher: bool = param(True, label="initialise from teacher layers",
                                    help="Copy the teacher's embeddings and an evenly spread subset "
                                         "of its layers into the student (needs equal widths).")


def cosine_hidden_loss(h_s: Tensor, h_t: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of 1 - cos(h_s, h_t); zero when the states point the same way."""
    cos = F.cosine_similarity(h_s, h_t.detach(), dim=-1, eps=1e-8)
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum().clamp_min(1)


def soft_loss(s: Tensor, t: Tensor, y: Tensor, T: float) -> Tensor:
    """Per-label binary KL for multi-hot targets, softmax KL otherwise (both times T^2)."""
    return multilabel_kd_loss(s, t, T) if is_multilabel(y) else kd_loss(s, t, T)


class TransformerMethod(Method):
    """Shared plumbing for methods that distil hidden states and attention maps."""
    requires_arch = ("transformer",)
    cache_teacher_logits = False      # the teacher runs every step anyway, for its hidden states

    def teacher_features(self, x: Tensor):
        from kdengine.models.transformer import features
        t = self.teachers[0]
        t.eval()
        with torch.no_grad():
            return features(t, x)

    def student_features(self, x: Tensor):
        from kdengine.models.transformer import features
        return features(self.student, x)

    def notice(self, message: str) -> None:
        self.ctx.notice(message)


def width_of(model: nn.Module) -> int | None:
    """Hidden size of a TextTransformer or of the Hugging Face adapter (both set ``width``)."""
    return getattr(model, "width", None)


@register
class DistilBert(TransformerMethod):
    name = "distilbert"
    supports_multilabel = True
    Params = DistilBertParams
    title = "DistilBERT (soft targets + hard loss + hidden-state cosine)"
    paper = "Sanh et al. 2019, arXiv:1910.01108"
    formula = (r"w_{soft}\,T^2\,KL(\sigma(t/T)\,\|\,\sigma(s/T)) + w_{hard}\,CE(y, s) + "
               r"w_{cos}\,\big(1 - \cos(h_s, h_t)\big)")
    weight_knobs = {"kd": "soft_weight", "ce": "hard_weight", "cos": "cos_weight"}
    temperature = "T"

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        ws, wt = width_of(student), width_of(self.teachers[0])
        # DistilBERT keeps the teacher's width; with another width a linear map (trained with the
        # student) makes the cosine comparable.
        self.proj = nn.Linear(ws, wt, bias=False) if (ws and wt and ws != wt) else None

    def setup(self, data) -> None:
        if self.params.init_from_teacher:
            from kdengine.models.transformer import copy_alternate_layers
            if copy_alternate_layers(self.student, self.teachers[0]):
                self.notice("Student initialised from the teacher's embeddings and evenly spread "
                            "layers (DistilBERT's initialisation).")
            else:
                self.notice("Student not initialised from the teacher: it needs the same width and "
                            "no more layers than the teacher.")

    def extra_modules(self):
        return [self.proj] if self.proj is not None else []

    def loss_terms(self, batch, step):
        p = self.params
        fs = self.student_features(batch.x)
        ft = self.teacher_features(batch.x)
        terms = {"kd": soft_loss(fs.logits, ft.logits.float(), batch.y, p.T)}
        if self.wants("ce"):
            terms["ce"] = self.hard_ce(fs.logits, batch)
        if self.wants("cos"):
            h_s = fs.hidden[-1] if self.proj is None else self.proj(fs.hidden[-1])
            terms["cos"] = cosine_hidden_loss(h_s, ft.hidden[-1].float(), fs.mask)
        return terms
