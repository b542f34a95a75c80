"""FitNets: hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015,
arXiv:1412.6550).

The paper trains the student in two stages:

1. **Hints.** The student up to a middle layer (the *guided* layer) learns to predict the teacher's
   middle layer (the *hint*) through a regressor r::

       min over (the student up to the guided layer, r) of  || u_hint(x) - r(v_guided(x)) ||^2

   Only those weights train; the rest of the student does not run.
2. **KD.** The whole student, started from stage 1's weights, learns the teacher's soft targets
   (Hinton KD: ``kd`` + ``ce``).

``schedule = "stagewise"`` (the default) is that: the first ``hint_epochs`` are stage 1 (at most
``hint_cap`` of the run, so a short run still trains the student's classifier), the rest stage 2. The ``hint`` term is the mean squared error over the hint's elements (the paper's sum of
squares up to a constant factor; alone in its stage, only the optimiser's step size sees it).

Layers are named by their module path (``named_modules()``) and read with forward hooks, no model
surgery; empty knobs mean each model's middle stage (``middle_layer``), as the paper guides and
hints from middle layers. The regressor (``conv_bn_relu``, the default) maps the guided layer's
output to the hint's shape: on feature maps a convolution whose kernel the paper sizes so its output
has the hint's height and width (``k = N_guided - N_hint + 1``, a 1x1 convolution when they match),
then BatchNorm (as in mdistiller's ConvReg) and ReLU (the paper gives the regressor the hint layer's
nonlinearity; the hints here are ReLU outputs). On vectors (MLPs) it is the same with a Linear map:
Linear, BatchNorm, ReLU (the hint is a hidden ReLU layer's output, never negative). On token
features (transformer blocks, whose outputs take both signs) it is a Linear map.

Options, each a deviation from the paper:

* ``schedule = "joint"``: hint + KD from the first step, one stage (the common simplification; with
  the mean-squared hint at weight 1 the hint is small next to KD).
* ``regressor = "linear"``: a 1x1 convolution or a Linear map, the student map average-pooled to the
  hint's size (no nonlinearity: the smallest map that can fit).
* ``fitnet_mdistiller`` (a method of its own, below): megvii-research/mdistiller's FitNet, the one the
  common CIFAR-100 benchmark tables report: cross-entropy + 100 x the hint's mean squared error
  from the first step, one stage, no KD term, hint layer 2 (the middle stage of a CIFAR ResNet).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.losses.logits import kd_loss
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register
from kdengine.models.cifar import ResBlock, WideBlock


def middle_layer(model: nn.Module, who: str = "student") -> str:
    """The name of a model's middle stage: the default guided layer (student) and hint (teacher).
    Read from the model itself, which may not be the config's (a shipped or a run teacher)."""
    if hasattr(model, "layer2"):                   # CIFAR ResNet, ResNet-18: layer1..3 (or 4)
        return "layer2"
    if hasattr(model, "blocks"):                   # the text transformer
        return f"blocks.{(len(model.blocks) - 1) // 2}"
    if not hasattr(model, "features"):
        raise ConfigError(f"method.params.{who}_layer", f"no middle stage is known for this "
                                                        f"{who}; name its layer")
    parts = list(model.features.named_children())
    if any(isinstance(m, nn.Linear) for _, m in parts):     # MLP: the hidden layers' ReLUs
        parts = [(n, m) for n, m in parts if isinstance(m, nn.ReLU)]
    else:          # a stem and three residual stages (resnetx4, wrn), or blocks (cnn, mobilenetv2)
        stages = [(n, m) for n, m in parts
                  if isinstance(m, nn.Sequential) and isinstance(m[0], (ResBlock, WideBlock))]
        parts = stages or parts
    return f"features.{parts[(len(parts) - 1) // 2][0]}"


@dataclass
class HintParams:
    teacher_layer: str = param("", label="hint layer (teacher)",
                               help="Module name in the teacher, e.g. features.1; empty = its "
                                    "middle stage.")
    student_layer: str = param("", label="guided layer (student)",
                               help="Module name in the student; empty = its middle stage.")
    regressor: str = param("conv_bn_relu", choices=("conv_bn_relu", "linear"),
                           help="conv_bn_relu: a convolution sized to the hint (the paper's), "
                                "BatchNorm, ReLU; a Linear map, BatchNorm, ReLU on an MLP's "
                                "vectors. linear: a 1x1 convolution or a Linear map (the smallest "
                                "map that can fit).")


@dataclass
class FitNetParams(HintParams):
    schedule: str = param("stagewise", choices=("stagewise", "joint"),
                          help="stagewise: the paper's two stages, the hint alone (training only "
                               "the student up to the guided layer), then KD on the whole student. "
                               "joint: hint + KD from the first step (a common simplification).")
    hint_epochs: float = param(2.0, min=0.0, max=10_000.0, label="hint-stage epochs",
                               help="Length of the hint stage (stagewise), at most the hint cap.")
    hint_cap: float = param(0.5, min=0.0, max=1.0, step=0.05, label="hint-stage cap",
                            help="Longest hint stage as a share of the run: the student's "
                                 "classifier only trains after it, in the KD stage.")
    hint_weight: float = weight_knob(1.0, "hint weight", step=0.1, max=1000.0)
    T: float = temperature_knob(4.0)
    soft_weight: float = weight_knob(0.9, "soft weight")
    hard_weight: float = weight_knob(0.1, "hard weight")


@dataclass
class FitNetMdistillerParams(HintParams):
    hint_weight: float = weight_knob(100.0, "hint weight", step=1.0, max=1000.0,
                                     help="Weight of the hint's mean squared error (mdistiller: 100).")
    hard_weight: float = weight_knob(1.0, "hard weight",
                                     help="Weight of the cross-entropy on true labels "
                                          "(mdistiller: 1).")


def find_module(model: nn.Module, name: str, who: str) -> nn.Module:
    mods = dict(model.named_modules())
    if name not in mods:
        names = [n for n in mods if n][:30]
        raise ConfigError(f"method.params.{who}_layer",
                          f"the {who} has no module {name!r}; some of its modules: {', '.join(names)}")
    return mods[name]


class HintReached(Exception):
    """Raised by a hook told to stop: the model has computed the layer it was run for."""


class FeatureHook:
    """Keeps the latest output of a module (a tensor, or the first tensor of a tuple). With ``stop``
    set it ends the forward pass there (``forward_to``)."""

    def __init__(self, module: nn.Module):
        self.out: Tensor | None = None
        self.stop = False
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output[0] if isinstance(output, (tuple, list)) else output
        if self.stop:
            raise HintReached


def forward_to(model: nn.Module, hook: FeatureHook, x: Tensor) -> Tensor:
    """Run ``model`` on x only as far as ``hook``'s module and return that module's output: nothing
    after it runs, so nothing after it gets a gradient or moves its BatchNorm statistics."""
    hook.stop = True
    try:
        model(x)
    except HintReached:
        pass
    finally:
        hook.stop = False
    return hook.out


def make_regressor(s_feat: Tensor, t_feat: Tensor, kind: str = "conv_bn_relu") -> nn.Module:
    """The map from the guided layer's output shape to the hint's (``kind``: see HintParams)."""
    nonlinear = kind == "conv_bn_relu"
    if s_feat.dim() == 4 and t_feat.dim() == 4:
        cs, ct = s_feat.shape[1], t_feat.shape[1]
        if not nonlinear:
            return nn.Conv2d(cs, ct, 1)
        (hs, ws), (ht, wt) = s_feat.shape[-2:], t_feat.shape[-2:]
        # The paper's kernel: a valid convolution from the guided map's size to the hint's. A guided
        # map smaller than the hint has none: a 3x3 convolution, its output pooled up (``align``).
        kernel, pad = ((hs - ht + 1, ws - wt + 1), 0) if hs >= ht and ws >= wt else (3, 1)
        return nn.Sequential(nn.Conv2d(cs, ct, kernel, padding=pad), nn.BatchNorm2d(ct), nn.ReLU())
    if s_feat.dim() != t_feat.dim():
        raise ConfigError("method.params.student_layer",
                          f"guided layer output {tuple(s_feat.shape[1:])} and hint layer output "
                          f"{tuple(t_feat.shape[1:])} have different ranks; pick matching layers")
    lin = nn.Linear(s_feat.shape[-1], t_feat.shape[-1])
    if not nonlinear or s_feat.dim() != 2:     # token features [B, L, D] take both signs
        return lin
    return nn.Sequential(lin, nn.BatchNorm1d(t_feat.shape[-1]), nn.ReLU())


def align(r_s: Tensor, t_feat: Tensor) -> Tensor:
    """Pool a regressed student map to the teacher map's spatial size when they differ."""
    if r_s.dim() == 4 and r_s.shape[-2:] != t_feat.shape[-2:]:
        return F.adaptive_avg_pool2d(r_s, t_feat.shape[-2:])
    return r_s


@register
class FitNet(Method):
    name = "fitnet"
    Params = FitNetParams
    title = "FitNets (a middle-layer hint through a regressor, then KD)"
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
        p = self.params
        return (p.teacher_layer or middle_layer(self.teachers[0], "teacher"),
                p.student_layer or middle_layer(self.student, "student"))

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

    def hint(self, h_s: Tensor, h_t: Tensor) -> Tensor:
        """The hint term: mean squared error between the regressed guided layer and the hint."""
        return F.mse_loss(align(self.regressor(h_s), h_t), h_t.detach())

    def teacher_hint(self, x: Tensor) -> Tensor:
        """The teacher's hint layer on x (eval mode, no gradient), the teacher run no further."""
        teacher = self.teachers[0]
        teacher.eval()
        with torch.no_grad():
            return forward_to(teacher, self.t_hook, x)

    def hint_stage(self) -> float:
        """Epochs of the hint stage (stagewise): ``hint_epochs``, at most ``hint_cap`` of the run."""
        p = self.params
        return min(p.hint_epochs, p.hint_cap * self.ctx.epochs) if p.schedule == "stagewise" else 0.0

    def loss_terms(self, batch, step):
        p = self.params
        if self.ctx.epoch_of(step) < self.hint_stage():
            # Stage 1: only the student up to the guided layer (and the regressor) trains.
            h_s = forward_to(self.student, self.s_hook, batch.x)
            return {"hint": self.hint(h_s, self.teacher_hint(batch.x))}
        # Stage 2 (or joint): KD on the whole student; joint also keeps the hint.
        s = self.student(batch.x)
        t = self.run_teacher(self.teachers[0], batch.x)    # eval + no_grad; fills the hint hook
        terms = {"kd": kd_loss(s, t, p.T)}
        if p.schedule == "joint":
            terms["hint"] = self.hint(self.s_hook.out, self.t_hook.out)
        return self.with_hard_ce(terms, s, batch)


@register
class FitNetMdistiller(FitNet):
    """mdistiller's FitNet (megvii-research/mdistiller, FITNET: HINT_LAYER 2, CE_WEIGHT 1,
    FEAT_WEIGHT 100, ConvReg): one stage from the first step, cross-entropy plus the hint, no KD."""
    name = "fitnet_mdistiller"
    Params = FitNetMdistillerParams
    title = "FitNets, mdistiller's recipe (cross-entropy + 100 x hint, one stage, no KD)"
    paper = "Romero et al. 2015, arXiv:1412.6550, as run by megvii-research/mdistiller"
    formula = r"w_{hint}\,\lVert r(h_s) - h_t \rVert^2 + w_{hard}\,CE(y, s)"     # no KD term
    weight_knobs = {"hint": "hint_weight", "ce": "hard_weight"}
    temperature = None

    def loss_terms(self, batch, step):
        s = self.student(batch.x)
        terms = {"hint": self.hint(self.s_hook.out, self.teacher_hint(batch.x))}
        return self.with_hard_ce(terms, s, batch)
