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
    """Train/test (and validation, when the data has a split) accuracy, and agreement and KL(teacher || student) with the teacher on test."""
    s_test = logits_of(student, data.test.x, device)
    y_test = data.test.y.to(device)
    if data.kind == "text":  # multi-label: per-label accuracy, micro-F1, binary KL (multilabel.py)
        from kdengine.losses.multilabel import metrics
        n = min(len(data.transfer), max_train)
        return metrics(s_test, y_test, logits_of(student, data.transfer.x[:n], device),
                       data.transfer.y[:n].to(device), t_test_logits)
    out = {"test_acc": (s_test.argmax(-1) == y_test).float().mean().item()}
    if data.val is not None:   # what a search selects on, so the test figure stays unseen
        s_val = logits_of(student, data.val.x, device)
        out["val_acc"] = (s_val.argmax(-1) == data.val.y.to(device)).float().mean().item()
    n = min(len(data.transfer), max_train)
    s_tr = logits_of(student, data.transfer.x[:n], device)
    out["train_acc"] = (s_tr.argmax(-1) == data.transfer.y[:n].to(device)).float().mean().item()
    if t_test_logits is not None:
        out["agreement"] = (s_test.argmax(-1) == t_test_logits.argmax(-1)).float().mean().item()
        log_pt = F.log_softmax(t_test_logits, -1)
        out["kl_test"] = (log_pt.exp() * (log_pt - F.log_softmax(s_test, -1))).sum(-1).mean().item()
    return out
