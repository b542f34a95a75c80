"""Multi-label losses and metrics (the text task: several labels per sample, y multi-hot float).

Each label is its own yes/no question, so a model's probabilities are per-label sigmoids, not one
softmax. Distillation follows: at temperature T the teacher's soft target for label j is
``sigmoid(t_j / T)`` and the loss is the binary KL per label,

    KD_ml = T^2 * mean_batch( sum_j KL(Bern(sigmoid(t_j/T)) || Bern(sigmoid(s_j/T))) ),

the multi-label analogue of Hinton's loss (as in multi-label DistilBERT fine-tuning, where the head
is trained with BCE). Reductions match the single-label losses: sum over labels (as KL sums over
classes), mean over the batch. The T^2 factor plays the same role: for large T the gradient of each
binary KL scales as 1/T^2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def is_multilabel(y: Tensor) -> bool:
    """Multi-hot float targets [N, K] (single-label data has int64 class ids [N])."""
    return y.dim() == 2 and y.dtype.is_floating_point


def binary_kl_logits(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Element-wise KL(Bern(sigmoid(t)) || Bern(sigmoid(s))), computed stably from logits."""
    t = teacher_logits.detach()
    p_t = torch.sigmoid(t)
    return (p_t * (F.logsigmoid(t) - F.logsigmoid(student_logits))
            + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-student_logits)))


def multilabel_kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float,
                       t_squared: bool = True) -> Tensor:
    """``T^2 * mean_batch sum_labels binaryKL(sigmoid(t/T) || sigmoid(s/T))``."""
    kl = binary_kl_logits(student_logits / T, teacher_logits / T).sum(-1).mean()
    return kl * (T * T) if t_squared else kl


def bce_per_sample(logits: Tensor, y: Tensor) -> Tensor:
    """Binary cross-entropy summed over labels, one value per sample."""
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").sum(-1)


def hard_loss(logits: Tensor, y: Tensor, labeled: Tensor | None = None) -> Tensor:
    """BCE on the labelled samples: sum over labelled / count (0 when none are labelled)."""
    per = bce_per_sample(logits, y)
    if labeled is None:
        return per.mean()
    lab = labeled.to(per.dtype)
    return (per * lab).sum() / lab.sum().clamp_min(1)


def predictions(logits: Tensor) -> Tensor:
    """A label is predicted when its probability passes 0.5 (logit > 0)."""
    return logits > 0


def label_accuracy(logits: Tensor, y: Tensor) -> float:
    """Per-label (Hamming) accuracy: the share of (sample, label) decisions that are right."""
    return (predictions(logits) == (y > 0.5)).float().mean().item()


def exact_match(logits: Tensor, y: Tensor) -> float:
    """Share of samples whose whole label set is right."""
    return (predictions(logits) == (y > 0.5)).all(-1).float().mean().item()


def micro_f1(logits: Tensor, y: Tensor) -> float:
    pred, true = predictions(logits), y > 0.5
    tp = (pred & true).sum().item()
    fp = (pred & ~true).sum().item()
    fn = (~pred & true).sum().item()
    return 2 * tp / max(1, 2 * tp + fp + fn)


def metrics(s_test: Tensor, y_test: Tensor, s_train: Tensor, y_train: Tensor,
            t_test: Tensor | None) -> dict[str, float]:
    """The trainer's per-epoch metrics for multi-label data. ``test_acc``/``train_acc`` are per-label
    accuracy (so the existing charts keep working), plus micro-F1 and exact match; ``agreement`` is
    the per-label agreement of the decisions and ``kl_test`` the binary KL at T=1 (summed over
    labels, test mean)."""
    out = {"test_acc": label_accuracy(s_test, y_test), "test_f1": micro_f1(s_test, y_test),
           "test_exact": exact_match(s_test, y_test),
           "train_acc": label_accuracy(s_train, y_train)}
    if t_test is not None:
        out["agreement"] = (predictions(s_test) == predictions(t_test)).float().mean().item()
        out["kl_test"] = binary_kl_logits(s_test, t_test).sum(-1).mean().item()
    return out
