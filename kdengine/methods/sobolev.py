"""Sobolev training (Czarnecki, Osindero, Jaderberg, Swirszcz, Pascanu 2017, "Sobolev Training for
Neural Networks", NeurIPS, arXiv:1706.04859).

The student matches the teacher's outputs AND their derivatives with respect to the input. Full
input Jacobians are large, so this is the paper's stochastic variant: for each sample draw ``k``
random unit vectors v in input space and match the projections ``J_s v`` to ``J_t v`` (L2), computed
in forward mode with ``torch.func.jvp``: one forward pass per projection, no Jacobian is formed
for the student. The frozen teacher's Jacobians on a fixed transfer set are computed once when they
fit in 128 MB (digits, toys), turning ``J_t v`` into a matrix product; otherwise its JVP runs each step.

Terms: ``mse`` (outputs, logit L2) or ``kd`` (outputs, Hinton KL at T) - the value part - and
``sobolev`` (the derivative part, times ``deriv_weight``); ``ce`` when a hard weight is set.
The teacher runs in eval mode under ``torch.no_grad()``: its JVP is a constant target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jvp, vmap

from kdengine.losses.logits import kd_loss, logit_mse
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.methods.base import Method, register


@dataclass
class SobolevParams:
    k: int = param(2, min=1, max=64, label="projections k",
                   help="Random unit vectors per sample: the Jacobian is matched along each.")
    deriv_weight: float = weight_knob(1.0, "derivative weight",
                                      "Weight of the Jacobian-projection term.", step=0.1, max=1000.0)
    value_loss: str = param("mse", choices=("mse", "kd"),
                            help="How outputs are matched: logit L2 or Hinton KL at T.")
    value_weight: float = weight_knob(1.0, "value weight", step=0.1)
    T: float = temperature_knob(4.0, help="Temperature of the KD value term (outputs matched by kd).")
    hard_weight: float = weight_knob(0.0, "hard weight")


def random_unit_vectors(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k unit vectors per sample, shaped like ``x`` repeated k times along the batch (k*B, ...)."""
    v = torch.randn((k * x.shape[0], *x.shape[1:]), generator=generator).to(x)
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def jacobian_projection(model: nn.Module, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(model(x), J(x) v) by forward-mode AD. Gradients to the model's parameters flow through both.

    ``torch.func`` refuses in-place buffer updates (BatchNorm's running statistics in train mode),
    so a model with buffers is called functionally on clones of them; its running statistics are
    then updated by the separate value forward the caller makes."""
    buffers = dict(model.named_buffers())
    if not buffers:
        return jvp(model, (x,), (v,))
    params = dict(model.named_parameters())

    def f(inp):
        return functional_call(model, (params, {k: b.clone() for k, b in buffers.items()}), (inp,))
    return jvp(f, (x,), (v,))


JACOBIAN_CACHE_FLOATS = 2**25      # 128 MB of float32


@torch.no_grad()
def teacher_jacobians(teacher: nn.Module, x: Tensor, device, chunk: int = 256) -> Tensor:
    """Per-sample input Jacobians of the (eval-mode, frozen) teacher: (N, classes, input size).

    Forward mode (``jacfwd``) under ``no_grad``: the teacher never joins an autograd graph."""
    teacher.eval()

    def one(xi):
        return teacher(xi.unsqueeze(0)).squeeze(0)
    per = vmap(jacfwd(one))
    out = [per(x[i:i + chunk].to(device)).flatten(2) for i in range(0, len(x), chunk)]
    return torch.cat(out)


def function_and_gradients(model: nn.Module, pts: Tensor) -> dict:
    """Logits and d logit_c / d input at each point (points are independent in eval mode)."""
    was = model.training
    model.eval()
    x = pts.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        grads = [torch.autograd.grad(z[:, c].sum(), x, retain_graph=True)[0]
                 for c in range(z.shape[1])]
    model.train(was)
    return {"logits": z.detach().cpu().tolist(),
            "grads": torch.stack(grads, 1).detach().cpu().tolist()}   # [points][class][2]


@register
class Sobolev(Method):
    name = "sobolev"
    Params = SobolevParams
    title = "Sobolev training (match outputs and input-gradients)"
    paper = "Czarnecki et al. 2017, arXiv:1706.04859"
    weight_knobs = {"mse": "value_weight", "kd": "value_weight", "sobolev": "deriv_weight",
                    "ce": "hard_weight"}
    temperature = "T"
    cache_teacher_logits = False    # the teacher's JVP gives its logits anyway (see setup)

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.gen = torch.Generator().manual_seed(ctx.seed + 104729)
        self.t_jac: Tensor | None = None

    def setup(self, data):
        if getattr(data, "kind", "image") == "text":
            raise ConfigError("method.name", "Sobolev training needs continuous inputs; token ids "
                                             "have no input gradient (use another method for text)")
        self._grid = None
        if data.kind == "2d":
            lo = data.transfer.x.min(0).values - 0.5
            hi = data.transfer.x.max(0).values + 0.5
            self._grid = (lo.tolist(), hi.tolist())
        # The transfer set is fixed and the teacher frozen, so when its input Jacobians are small
        # enough (digits: 1347 x 10 x 64 floats) they are computed once and J_t v becomes a matmul;
        # the teacher's forward-mode pass was most of a step's time. Logits are cached with them.
        n, d = len(data.transfer), math.prod(data.input_shape)
        if n * self.ctx.n_classes * d <= JACOBIAN_CACHE_FLOATS:
            self.t_jac = teacher_jacobians(self.teachers[0], data.transfer.x, self.ctx.device)
            self.cache_teacher_logits = True

    def artifacts(self):
        """On 2-D data: both models' logits and input-gradients on a grid (the function view)."""
        if getattr(self, "_grid", None) is None:
            return {}
        (x0, y0), (x1, y1) = self._grid
        n = 21
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, n), torch.linspace(y0, y1, n), indexing="xy")
        pts = torch.stack([gx.flatten(), gy.flatten()], 1).to(self.ctx.device)
        out = {"xs": gx[0].tolist(), "ys": gy[:, 0].tolist()}
        for who, model in (("teacher", self.teachers[0]), ("student", self.student)):
            out[who] = function_and_gradients(model, pts)
        return {"sobolev_field": out}

    def loss_terms(self, batch, step):
        p = self.params
        x = batch.x
        k = p.k
        xs = x.repeat(k, *([1] * (x.dim() - 1)))
        v = random_unit_vectors(x, k, self.gen)
        if self.t_jac is not None and batch.teacher_logits is not None:
            t = batch.teacher_logits[0]
            jac = self.t_jac[batch.idx].repeat(k, 1, 1)                     # (k*B, C, D)
            t_jv = torch.einsum("bcd,bd->bc", jac, v.flatten(1))
        else:
            teacher = self.teachers[0]
            teacher.eval()
            with torch.no_grad():
                t_rep, t_jv = jacobian_projection(teacher, xs, v)
            t = t_rep[: x.shape[0]]
        if any(True for _ in self.student.buffers()):
            s = self.student(x)                    # updates BatchNorm running statistics once
            _, s_jv = jacobian_projection(self.student, xs, v)
        else:
            s_rep, s_jv = jacobian_projection(self.student, xs, v)
            s = s_rep[: x.shape[0]]
        terms = {}
        if p.value_loss == "kd":
            terms["kd"] = kd_loss(s, t, p.T)
        else:
            terms["mse"] = logit_mse(s, t)
        # Mean over samples and projections of the squared projection error, per output unit
        # (the same scale as the logit MSE, so deriv_weight 1 weighs the two alike).
        terms["sobolev"] = (s_jv - t_jv.detach()).pow(2).mean()
        return self.with_hard_ce(terms, s, batch)
