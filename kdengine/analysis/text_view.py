"""Soft-target explorer for the text task: per-label probabilities of one sentence.

A multi-label model answers one yes/no question per label, so its soft targets at temperature T are
per-label sigmoids ``sigmoid(z_j / T)`` rather than one softmax; the distillation loss compares them
label by label (binary KL, :mod:`kdengine.losses.multilabel`). Given the ``RunModels`` that
:func:`kdengine.run.stored.load_run_models` returns for a text run, this module gives the numbers a page
draws: the sentence, its true labels, teacher and student probabilities at T, the per-label KL and
the attention maps of a layer. No UI code.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import kdengine.data.text as text
import kdengine.models.transformer as transformer
from kdengine.losses.multilabel import binary_kl_logits


def sigmoid_T(logits: Tensor | np.ndarray, T: float) -> np.ndarray:
    """Per-label probability at temperature T: sigmoid(z / T)."""
    return torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64) / float(T)).numpy()


def binary_entropy_curve(logits: Tensor | np.ndarray, Ts: np.ndarray) -> np.ndarray:
    """Mean per-label binary entropy (nats) of sigmoid(z / T) for each T; rises towards log 2."""
    z = torch.as_tensor(logits, dtype=torch.float64).reshape(1, -1)
    p = torch.sigmoid(z / torch.as_tensor(np.asarray(Ts), dtype=torch.float64).reshape(-1, 1))
    p = p.clamp(1e-12, 1 - 1e-12)
    return (-(p * p.log() + (1 - p) * (1 - p).log())).mean(-1).numpy()


def text_sample_view(models, index: int, T: float) -> dict[str, Any]:
    """Everything about test sentence ``index`` at temperature T.

    ``rows``: one dict per label with the true value, teacher and student probabilities at T and the
    binary KL(teacher || student) at T for that label (without T^2, like the single-label explorer).
    """
    data, cfg = models.data, models.cfg
    tok = text.tokenizer_for(cfg.data)
    x = data.test.x[index]
    y = data.test.y[index].numpy()
    s = models.s_test[index]
    t = models.t_test[index] if models.t_test is not None else None
    p_s = sigmoid_T(s, T)
    p_t = sigmoid_T(t, T) if t is not None else None
    kl = binary_kl_logits(s.double() / T, t.double() / T).numpy() if t is not None else None
    rows = []
    for j, name in enumerate(data.class_names):
        rows.append({"label": name, "true": int(y[j] > 0.5),
                     "teacher": None if p_t is None else float(p_t[j]), "student": float(p_s[j]),
                     "kl": None if kl is None else float(kl[j])})
    return {"index": int(index), "text": tok.decode(x), "tokens": tok.tokens(x),
            "true_labels": [n for n, v in zip(data.class_names, y) if v > 0.5],
            "rows": rows, "p_teacher": p_t, "p_student": p_s, "T": float(T),
            "kl_total": None if kl is None else float(kl.sum())}


@torch.no_grad()
def attention_maps(model: torch.nn.Module, x_row: Tensor) -> list[np.ndarray]:
    """Each layer's attention probabilities for one sentence, [heads, n, n] over its real tokens."""
    model.eval()
    f = transformer.features(model, x_row.reshape(1, -1))
    n = int(f.mask[0].sum())
    return [a[0, :, :n, :n].float().numpy() for a in f.attentions]


