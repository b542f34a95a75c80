"""The run's optimiser and learning-rate schedule, from its ``train`` config.

One place for both, so that what a method trains with an optimiser of its own (DML's peers updated
in turn) follows the same optimiser and the same schedule as the student.
"""
from __future__ import annotations

import torch


def make_optimizer(tc, params):
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def make_scheduler(tc, opt, total_steps):
    """Stepped once per optimiser step; None without a schedule."""
    if tc.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
    if tc.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, max(1, total_steps // 3), gamma=0.1)
    return None
