"""FitNets: hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015,
arXiv:1412.6550).

A student ("guided") layer is pushed towards a teacher ("hint") layer through a small learned
regressor: ``hint = weight * || r(h_s) - h_t ||^2`` (mean over elements). Layers are named by their
module path (``named_modules()``) and read with forward hooks: no model surgery. The regressor is an
extra trainable module (a linear map for vectors and token features, a 1x1 conv for feature maps,
whose student map is average-pooled to the teacher's size when they differ). ``regressor =
"conv_bn_relu"`` gives it a nonlinearity, as in widely used reference code (3x3 conv, BatchNorm,
ReLU for feature maps; linear, BatchNorm, ReLU for vectors; linear, ReLU for token features).

Schedules: ``joint`` adds the hint to Hinton KD throughout; ``stagewise`` is the paper's recipe:
first ``hint_epochs`` of hint only (training the student up to the guided layer), then KD only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.losses.logits import kd_loss
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register

# A sensible pair of layers per model family: the last feature stage before pooling / the head.
DEFAULT_LAYER = {"mlp": "features", "cnn": "features", "resnet": "layer3", "resnet18": "layer4",
                 "transformer": "encoder"}


@dataclass
class FitNetParams:
    teacher_layer: str = param("", label="hint layer (teacher)",
                               help="Module name in the teacher, e.g. features; empty = the "
                                    "family's default (MLP/CNN features, resnet layer3).")
    student_layer: str = param("", label="guided layer (student)",
                               help="Module name in the student; empty = the family's default.")
    hint_weight: float = weight_knob(1.0, "hint weight", step=0.1, max=1000.0)
    schedule: str = param("joint", choices=("joint", "stagewise"),
                          help="joint: hint + KD throughout; stagewise: hint only for the "
                               "hint-stage epochs, then KD only (the paper's two stages).")
    hint_epochs: float = param(2.0, min=0.0, max=10_000.0, label="hint-stage epochs",
                               help="Length of the hint-only stage (stagewise).")
    regressor: str = param("linear", choices=("linear", "conv_bn_relu"),
                           help="linear: a linear map (1x1 conv on feature maps); conv_bn_relu: "
                                "conv/linear, BatchNorm, ReLU (a nonlinear regressor, as in "
                                "reference code).")
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight")
    hard_weight: float = weight_knob(0.1, "hard weight")


def find_module(model: nn.Module, name: str, who: str) -> nn.Module:
    mods = dict(model.named_modules())
    if name not in mods:
        names = [n for n in mods if n][:30]
        raise ConfigError(f"method.params.{who}_layer",
                          f"the {who} has no module {name!r}; some of its modules: {', '.join(names)}")
    return mods[name]


class FeatureHook:
    """Keeps the latest output of a module (a tensor, or the first tensor of a tuple)."""

    def __init__(self, module: nn.Module):
        self.out: Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output[0] if isinstance(output, (tuple, list)) else output


def make_regressor(s_feat: Tensor, t_feat: Tensor, kind: str = "linear") -> nn.Module:
    """The map from the student's feature shape to the teacher's (``kind``: see FitNetParams)."""
    nonlinear = kind == "conv_bn_relu"
    if s_feat.dim() == 4 and t_feat.dim() == 4:
        cs, ct = s_feat.shape[1], t_feat.shape[1]
        if nonlinear:
            return nn.Sequential(nn.Conv2d(cs, ct, 3, padding=1), nn.BatchNorm2d(ct), nn.ReLU())
        return nn.Conv2d(cs, ct, 1)
    if s_feat.dim() != t_feat.dim():
        raise ConfigError("method.params.student_layer",
                          f"guided layer output {tuple(s_feat.shape[1:])} and hint layer output "
                          f"{tuple(t_feat.shape[1:])} have different ranks; pick matching layers")
    lin = nn.Linear(s_feat.shape[-1], t_feat.shape[-1])
    if not nonlinear:
        return lin
    if s_feat.dim() == 2:
        return nn.Sequential(lin, nn.BatchNorm1d(t_feat.shape[-1]), nn.ReLU())
    return nn.Sequential(lin, nn.ReLU())      # token features [B, L, D]: no batch statistics


def align(r_s: Tensor, t_feat: Tensor) -> Tensor:
    """Pool a regressed student map to the teacher map's spatial size when they differ."""
    if r_s.dim() == 4 and r_s.shape[-2:] != t_feat.shape[-2:]:
        return F.adaptive_avg_pool2d(r_s, t_feat.shape[-2:])
    return r_s


@register
class FitNet(Method):
    name = "fitnet"
    Params = FitNetParams
    title = "FitNets (feature hints through a regressor)"
    paper = "Romero et al. 2015, arXiv:1412.6550"
    formula = (r"w_{hint}\,\lVert r(h_s) - h_t \rVert^2 + "
               r"w_{soft}\,T^2\,KL(\sigma(t/T)\,\|\,\sigma(s/T)) + w_{hard}\,CE(y, s)")
    weight_knobs = {"hint": "hint_weight", "kd": "soft_weight", "ce": "hard_weight"}
    temperature = "T"
    cache_teacher_logits = False      # the teacher runs every step anyway, for its hint features
    lint_probe = "full"               # setup is cheap (one probe forward)

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.regressor: nn.Module | None = None

    def _layer_names(self) -> tuple[str, str]:
        cfg = self.ctx.config
        t_arch = cfg.teacher.model.arch if cfg is not None else "mlp"
        s_arch = cfg.student.arch if cfg is not None else "mlp"
        p = self.params
        return (p.teacher_layer or DEFAULT_LAYER.get(t_arch, "features"),
                p.student_layer or DEFAULT_LAYER.get(s_arch, "features"))

    def setup(self, data):
        t_name, s_name = self._layer_names()
        self.t_hook = FeatureHook(find_module(self.teachers[0], t_name, "teacher"))
        self.s_hook = FeatureHook(find_module(self.student, s_name, "student"))
        x = data.transfer.x[:2].to(self.ctx.device)
        was = self.student.training
        with torch.no_grad():
            self.student.eval()
            self.student(x)
            self.teachers[0](x)
        self.student.train(was)
        self.regressor = make_regressor(self.s_hook.out, self.t_hook.out,
                                        self.params.regressor).to(self.ctx.device)

    def extra_modules(self):
        return [self.regressor] if self.regressor is not None else []

    def loss_terms(self, batch, step):
        p = self.params
        s = self.student(batch.x)
        h_s = self.s_hook.out
        t = self.run_teacher(self.teachers[0], batch.x)    # eval + no_grad; fills the hint hook
        h_t = self.t_hook.out.detach()
        hint_stage = p.schedule == "stagewise" and self.ctx.epoch_of(step) < p.hint_epochs
        terms = {}
        if p.schedule == "joint" or hint_stage:
            terms["hint"] = F.mse_loss(align(self.regressor(h_s), h_t), h_t)
        if not hint_stage:
            terms["kd"] = kd_loss(s, t, p.T)
            self.with_hard_ce(terms, s, batch)
        return terms
