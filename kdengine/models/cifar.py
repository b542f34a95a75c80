"""The CIFAR-size families of the common KD benchmarks (the CRD and DKD papers' tables).

Shapes follow the benchmark models so parameter counts match the published ones (100 classes):
resnet8x4 ~1.2M, resnet32x4 ~7.4M, wrn_40_2 ~2.2M, wrn_16_2 ~0.7M, MobileNetV2 x0.5 ~0.8M.
What ``depth`` and ``width`` mean per family (validated in :mod:`kdengine.core.config`):

    resnetx4     depth 6n+2; width = stem channels w, stages 2w, 4w, 8w (w = 32: resnet8x4/32x4)
    wrn          depth 6n+4; width = widen factor k, stages 16k, 32k, 64k (wrn_40_2: 40, 2)
    mobilenetv2  depth = expansion ratio of the inverted residuals; width = width multiplier in %
                 (the benchmarks' "MobileNetV2" student is expansion 6, width 50)

Every model keeps its convolutional trunk in ``features`` (FitNets' default hint layer is its middle
stage) and ends in an adaptive average pool, so it also runs on images smaller than 32x32 (digits).
"""
from __future__ import annotations

from torch import nn

from kdengine.core.config import CIFAR_ARCHS, ModelConfig
from kdengine.models.families import LABELS, builder


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions (what the benchmark models use); BN starts at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Classifier(nn.Module):
    """``features`` (a conv trunk) -> global average pool -> ``head``."""

    def __init__(self, features: nn.Module, channels: int, n_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, n_classes)
        init_weights(self)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


# -- ResNet "x4": post-activation basic blocks, a 1x1 projection where the shape changes -----------
class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, relu=False))
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else conv_bn(cin, cout, 1, stride, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


def stages(block, cin: int, widths: tuple[int, ...], n: int, first_stride: tuple[int, ...]):
    """Three stages of ``n`` blocks; the first block of each may change stride and channels."""
    out = []
    for w, s in zip(widths, first_stride):
        out.append(nn.Sequential(*[block(cin if j == 0 else w, w, s if j == 0 else 1)
                                   for j in range(n)]))
        cin = w
    return out


@builder("resnetx4")
def _resnetx4(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    w = cfg.width
    widths = (2 * w, 4 * w, 8 * w)
    trunk = nn.Sequential(conv_bn(input_shape[0], w),
                          *stages(ResBlock, w, widths, (cfg.depth - 2) // 6, (1, 2, 2)))
    return Classifier(trunk, widths[-1], n_classes)


# -- Wide ResNet: pre-activation blocks (BN-ReLU-conv), dropout-free ------------------------------
class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.conv1 = conv_bn(cin, cout, 3, stride)          # conv, BN, ReLU
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = stride == 1 and cin == cout
        # As in the original WRN, a projection shortcut reads the pre-activated input.
        self.short = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = self.pre(x)
        out = self.conv2(self.conv1(a))
        return out + (x if self.equal else self.short(a))


@builder("wrn")
def _wrn(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    k = cfg.width
    widths = (16 * k, 32 * k, 64 * k)
    trunk = nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False),
                          *stages(WideBlock, 16, widths, (cfg.depth - 4) // 6, (1, 2, 2)),
                          nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
    return Classifier(trunk, widths[-1], n_classes)


# -- MobileNetV2 for 32x32 inputs ------------------------------------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, channels, blocks, stride); expansion None = the family's depth knob
MOBILENET_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
                    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


@builder("mobilenetv2")
def _mobilenetv2(cfg: ModelConfig, input_shape: tuple, n_classes: int) -> nn.Module:
    mult = cfg.width / 100
    c = int(32 * mult)
    layers: list[nn.Module] = [conv_bn(input_shape[0], c, 3, 2)]
    for t, ch, n, s in MOBILENET_STAGES:
        out = int(ch * mult)
        for j in range(n):
            layers.append(InvertedResidual(c, out, s if j == 0 else 1, t or cfg.depth))
            c = out
    last = max(1280, int(1280 * mult))       # the last layer never narrows below 1280
    layers.append(conv_bn(c, last, 1))
    return Classifier(nn.Sequential(*layers), last, n_classes)


def cifar_label(cfg: ModelConfig) -> str:
    if cfg.arch == "resnetx4":
        return f"resnet{cfg.depth}x4" + ("" if cfg.width == 32 else f" stem {cfg.width}")
    if cfg.arch == "wrn":
        return f"wrn_{cfg.depth}_{cfg.width}"
    return f"MobileNetV2 t{cfg.depth} x{cfg.width / 100:g}"


for _arch in CIFAR_ARCHS:
    LABELS[_arch] = cifar_label
