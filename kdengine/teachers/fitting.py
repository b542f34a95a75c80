"""Plain supervised training and accuracy: teachers, baselines and ladder models use these."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from kdengine.losses import multilabel


def amp_on(tc) -> bool:
    """Whether ``train.amp`` (``tc``: the TrainConfig) applies: on CUDA (device cuda, or auto with a
    GPU), and on the CPU only when device cpu was asked for by name, to test the same code path."""
    return tc.amp and (tc.device != "auto" or torch.cuda.is_available())


def bf16_autocast(tc, device: torch.device) -> torch.autocast | None:
    """The bf16 autocast a run's steps (student and teacher alike) go under, or None."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp_on(tc) else None


def fit_supervised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                   batch_size: int, seed: int, device: torch.device,
                   progress: Callable[[float, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   autocast: torch.autocast | None = None) -> None:
    """Plain cross-entropy training (teachers, baselines, ladder models); the forward and loss under
    ``autocast`` when given (:func:`bf16_autocast`)."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    n = len(y)
    steps = max(1, (n + batch_size - 1) // batch_size)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            with autocast or contextlib.nullcontext():
                out = model(x[idx])
                loss = (multilabel.hard_loss(out, y[idx]) if y.dim() == 2    # multi-hot text labels
                        else nn.functional.cross_entropy(out, y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if should_stop and should_stop():
            raise InterruptedError("stopped")
        if progress:
            progress((ep + 1) / epochs, f"epoch {ep + 1}/{epochs}")
    opt.zero_grad(set_to_none=True)   # a teacher must not carry the last step's gradients around
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             chunk: int = 2048) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk].to(device)).cpu()
        if y.dim() == 2:   # multi-label: per-label accuracy, as the trainer reports for text
            hit = multilabel.predictions(out) == (y[i:i + chunk] > 0.5)
            correct += hit.float().mean(-1).sum().item()
        else:
            correct += (out.argmax(-1) == y[i:i + chunk]).sum().item()
    return correct / max(1, len(y))
