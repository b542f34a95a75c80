"""Model families with a size knob, so a ladder of sizes exists for teacher-assistant work.

Families: ``mlp`` (depth x width), ``cnn`` (conv blocks x base channels), ``resnet`` (CIFAR-style,
depth 6n+2 with base width 16, or 64 for the "x4" variants) and ``resnet18`` (torchvision's, adapted
to small images: 3x3 stem, no max-pool). The KD benchmarks' CIFAR families (resnetx4, wrn,
mobilenetv2) live in :mod:`kdengine.models.cifar`. New families register a builder in ``BUILDERS``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from kdengine.core.config import CIFAR_ARCHS, ModelConfig

BUILDERS: dict[str, Callable[[ModelConfig, tuple, int], nn.Module]] = {}
# How families defined in other modules name a model config (e.g. "resnet8x4"); see model_label.
LABELS: dict[str, Callable[[ModelConfig], str]] = {}


def builder(arch: str):
    def deco(fn):
        BUILDERS[arch] = fn
        return fn
    return deco


class MLP(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, depth: int, width: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.head(self.features(x))


@builder("mlp")
def _mlp(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), n_classes, cfg.depth, cfg.width, cfg.dropout)


class CNN(nn.Module):
    """Plain conv net: blocks of conv3x3-BN-ReLU, halving the image while it is at least 4 wide."""

    def __init__(self, in_ch: int, hw: int, n_classes: int, depth: int, width: int,
                 dropout: float = 0.0):
        super().__init__()
        blocks = []
        c, size = in_ch, hw
        for i in range(depth):
            out = width * (2 ** min(i, 3))
            block = [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if size >= 4:
                block.append(nn.MaxPool2d(2))
                size //= 2
            blocks.append(nn.Sequential(*block))
            c = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


@builder("cnn")
def _cnn(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    return CNN(input_shape[0], input_shape[-1], n_classes, cfg.depth, cfg.width, cfg.dropout)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet: depth = 6n + 2, three stages of n blocks (w, 2w, 4w)."""

    def __init__(self, in_ch: int, n_classes: int, depth: int, width: int):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages, c = [], width
        for i, mult in enumerate((1, 2, 4)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, width * mult, 2 if (j == 0 and i > 0) else 1))
                c = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.pool(x))


@builder("resnet")
def _resnet(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    return CifarResNet(input_shape[0], n_classes, cfg.depth, cfg.width)


@builder("resnet18")
def _resnet18(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.resnet18(num_classes=n_classes)
    # Small images: a 3x3 stride-1 stem and no max-pool keep 8x8 / 28x28 / 32x32 inputs usable.
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def build_model(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    if cfg.arch not in BUILDERS:
        raise ValueError(f"no builder for model family {cfg.arch!r}")
    return BUILDERS[cfg.arch](cfg, tuple(input_shape), n_classes)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 2048):
    model.eval()
    # joined on the sample axis: second last, since stacked students put theirs first ([S, N, C])
    return torch.cat([model(x[i:i + chunk].to(device)).float() for i in range(0, len(x), chunk)],
                     dim=-2)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_label(cfg: ModelConfig) -> str:
    if cfg.arch == "mlp":
        return f"MLP {cfg.depth}x{cfg.width}"
    if cfg.arch == "cnn":
        return f"CNN d{cfg.depth} w{cfg.width}"
    if cfg.arch == "resnet":
        return f"resnet{cfg.depth}" + ("x4" if cfg.width == 64 else ("" if cfg.width == 16 else
                                                                      f" w{cfg.width}"))
    if cfg.arch == "resnet18":
        return "ResNet-18"
    if cfg.arch in LABELS:
        return LABELS[cfg.arch](cfg)
    return f"{cfg.arch} d{cfg.depth} w{cfg.width}"


def ladder(arch: str, base: ModelConfig | None = None) -> list[ModelConfig]:
    """Sizes of one family from small to large (the TA-gap x axis)."""
    base = base or ModelConfig(arch=arch)
    if arch == "mlp":
        return [ModelConfig("mlp", base.depth, w) for w in (8, 16, 32, 64, 128, 256, 512)]
    if arch == "cnn":
        return [ModelConfig("cnn", d, base.width) for d in (1, 2, 3, 4, 5, 6)]
    if arch == "resnet":
        return [ModelConfig("resnet", d, base.width) for d in (8, 14, 20, 32, 44, 56)]
    if arch in ("resnetx4", "wrn"):      # the benchmark depths at the base's width
        depths = (8, 14, 20, 32, 44, 56) if arch == "resnetx4" else (10, 16, 22, 28, 40)
        width = base.width if base.width in CIFAR_ARCHS[arch]["width"] else \
            {"resnetx4": 32, "wrn": 2}[arch]
        return [ModelConfig(arch, d, width) for d in depths]
    return [base]
