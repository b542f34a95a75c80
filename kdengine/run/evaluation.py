"""End-of-epoch evaluation: accuracies, and agreement and KL with the teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdengine.data import DataBundle
from kdengine.models import logits_of


@torch.no_grad()
def evaluate(student: nn.Module, data: DataBundle, device: torch.device,
             t_test_logits: torch.Tensor | None, max_train: int = 5000) -> dict[str, float]:
    """Train/test accuracy, and agreement and KL(teacher || student) with the teacher on test."""
    return evaluate_each(student, data, device, t_test_logits, max_train)[0]


@torch.no_grad()
def evaluate_each(student: nn.Module, data: DataBundle, device: torch.device,
                  t_test_logits: torch.Tensor | None, max_train: int = 5000) -> list[dict[str, float]]:
    """:func:`evaluate` for each student of a stack (logits ``[S, N, C]``; one dict per student) or
    of a plain model (one dict). The same reductions either way, so a stacked student's numbers are
    the ones it would get alone."""
    s_test = logits_of(student, data.test.x, device)
    y_test = data.test.y.to(device)
    n = min(len(data.transfer), max_train)
    if data.kind == "text":  # multi-label: per-label accuracy, micro-F1, binary KL (multilabel.py)
        from kdengine.losses.multilabel import metrics
        return [metrics(s_test, y_test, logits_of(student, data.transfer.x[:n], device),
                        data.transfer.y[:n].to(device), t_test_logits)]
    out = {"test_acc": (s_test.argmax(-1) == y_test).float().mean(-1)}
    s_tr = logits_of(student, data.transfer.x[:n], device)
    out["train_acc"] = (s_tr.argmax(-1) == data.transfer.y[:n].to(device)).float().mean(-1)
    if t_test_logits is not None:
        out["agreement"] = (s_test.argmax(-1) == t_test_logits.argmax(-1)).float().mean(-1)
        log_pt = F.log_softmax(t_test_logits, -1)
        out["kl_test"] = (log_pt.exp() * (log_pt - F.log_softmax(s_test, -1))).sum(-1).mean(-1)
    cols = {k: v.reshape(-1).tolist() for k, v in out.items()}   # one host sync per metric
    return [{k: col[i] for k, col in cols.items()} for i in range(len(cols["test_acc"]))]
