"""Rough memory estimates, so a run that cannot fit is refused before it starts, with the reason."""
from __future__ import annotations

import math
import os

from .config import RunConfig


def _model_params(cfg, input_dim: int, n_classes: int) -> int:
    if cfg.arch == "mlp":
        d, total = input_dim, 0
        for _ in range(cfg.depth):
            total += d * cfg.width + cfg.width
            d = cfg.width
        return total + d * n_classes
    if cfg.arch == "resnet18":
        return 11_200_000
    # conv families: width^2 * 9 per layer, widths up to 8x base
    layers = cfg.depth if cfg.arch == "cnn" else cfg.depth
    return int(layers * 9 * (cfg.width * 4) ** 2)


_INPUT = {"digits": (64, 10), "mnist": (784, 10), "fashion_mnist": (784, 10), "cifar10": (3072, 10),
          "text": (64, 6)}


def estimate_bytes(cfg: RunConfig) -> tuple[int, str]:
    """(bytes, field most responsible) for data + models + optimiser + one batch of activations."""
    dim, k = _INPUT.get(cfg.data.name, (2, max(2, cfg.data.n_classes)))
    n = cfg.data.n_samples if dim == 2 else {"digits": 1797, "mnist": 70000,
                                             "fashion_mnist": 70000, "cifar10": 60000}.get(
        cfg.data.name, 10000)
    data_bytes = n * dim * 4 * 2
    p_s = _model_params(cfg.student, dim, k)
    p_t = _model_params(cfg.teacher.model, dim, k)
    model_bytes = (p_s + p_t) * 4 * 4          # weights, grads, two Adam moments
    width = max(cfg.student.width, cfg.teacher.model.width)
    depth = max(cfg.student.depth, cfg.teacher.model.depth)
    spatial = dim if cfg.student.arch in ("cnn", "resnet", "resnet18") else 1
    act_bytes = cfg.train.batch_size * width * 4 * depth * 4 * max(1, spatial) * 3
    sizes = {"data.n_samples": data_bytes, "student": p_s * 16, "teacher.model": p_t * 16,
             "train.batch_size": act_bytes}
    return int(data_bytes + model_bytes + act_bytes), max(sizes, key=sizes.get)


def memory_limit(cfg: RunConfig) -> int:
    env = os.environ.get("KD_MAX_RUN_GIB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(total * 0.5)
