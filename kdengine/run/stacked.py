"""Stacked students: many small students of one architecture as one module whose forward returns
logits with a leading student axis, ``[S, B, C]``, and the rules for which runs may stack.

The method's own ``loss_terms`` then gives every student's terms at once (the losses broadcast over
the student axis; the knobs that differ between students come as ``[S, 1, 1]`` tensors); a student's
loss depends only on its own slice, so its gradient is the one it would get alone, and Adam and SGD
are element-wise, so each slice keeps its own optimiser state. The group trainer
(:mod:`kdengine.run.group`) trains such a stack with the ordinary trainer loop.

* MLPs become :class:`StackedMLP`: stacked weights and ``torch.baddbmm``.
* Any other family goes through :class:`VmapStack` (``torch.func.stack_module_state`` +
  ``vmap(functional_call)``, BatchNorm buffers included).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.core.config import RunConfig, config_hash
from kdengine.methods import get_method_class
from kdengine.models.families import MLP


# ---------------------------------------------------------------------------------------------
# which cells stack
# ---------------------------------------------------------------------------------------------
def per_student_knobs(method_cls) -> tuple[str, ...]:
    """Knobs that may differ between stacked students: the weight knobs (the trainer applies
    them) and the method's ``stack_knobs``."""
    return tuple(dict.fromkeys([*method_cls.weight_knobs.values(), *method_cls.stack_knobs]))


def group_key(cfg: RunConfig) -> str:
    """Cells with one key share data, teacher, batches and init, and differ only in per-student
    knobs: they train in one pass."""
    d = cfg.semantic_dict()
    name, params = d["method"]["name"], d["method"]["params"]
    varying = set(per_student_knobs(get_method_class(name)))
    d["method"] = {"name": name, "params": {k: v for k, v in params.items() if k not in varying}}
    return config_hash(d)


def why_not_stacked(cfg: RunConfig) -> str:
    """Why this run cannot train as a stacked student ("" when it can)."""
    method_cls = get_method_class(cfg.method.name)
    if not method_cls.supports_stacking:
        return f"method {method_cls.name} trains one student at a time"
    if cfg.student.arch == "transformer":
        return "transformer students (the text task) train one at a time"
    return ""


def why_not_cohort(cfg: RunConfig) -> str:
    """Why a run cannot join a cohort, a group the engine forms by itself from runs of different
    people ("" when it can). A cohort member must get exactly the numbers it would get alone."""
    reason = why_not_stacked(cfg)
    if reason:
        return reason
    if cfg.student.arch != "mlp":
        return (f"only MLP students are gathered into cohorts: under vmap a {cfg.student.arch} "
                f"stack costs about as much as its runs one after another")
    if cfg.student.dropout:
        return ("a student with dropout trains alone: in a stack its dropout masks would not be "
                "the ones it draws alone")
    return ""


def stacked_params(method_cls, cfgs: list[RunConfig], device) -> object:
    """The cells' knobs as one ``Params``: each per-student knob as a ``[S, 1, 1]`` tensor (it
    broadcasts against stacked logits ``[S, B, C]``), every other knob as the cells share it."""
    dicts = [c.to_dict()["method"]["params"] for c in cfgs]
    knobs = dict(dicts[0])
    for k in per_student_knobs(method_cls):
        if k in knobs:
            knobs[k] = torch.tensor([float(d[k]) for d in dicts], device=device).view(-1, 1, 1)
    return method_cls.Params(**knobs)


# ---------------------------------------------------------------------------------------------
# stacked students: one module, logits [S, B, C]
# ---------------------------------------------------------------------------------------------
class StackedMLP(nn.Module):
    """N MLPs of one shape as stacked weights; ``forward(x)`` -> logits (N, B, classes)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.n = len(models)
        template = models[0]          # read for names only; not registered (no extra parameters)
        self.names = [name for name, m in template.named_modules() if isinstance(m, nn.Linear)]
        lin = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        # nn.Linear layout (out, in) is kept so unstacking is a plain slice.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[k].weight.detach() for ls in lin]).clone())
            for k in range(len(self.names)))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[k].bias.detach() for ls in lin]).unsqueeze(1).clone())
            for k in range(len(self.names)))
        drop = [m for m in template.modules() if isinstance(m, nn.Dropout)]
        self.p_drop = drop[0].p if drop else 0.0

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1).unsqueeze(0).expand(self.n, -1, -1)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if k < last:
                h = torch.relu(h)
                if self.p_drop:
                    h = F.dropout(h, self.p_drop, self.training)
        return h

    def state_dict_of(self, i: int) -> dict[str, Tensor]:
        """Student i as a state dict of the ordinary model (loadable by build_model's MLP)."""
        out = {}
        for name, w, b in zip(self.names, self.weights, self.biases):
            out[f"{name}.weight"] = w[i].detach().cpu().clone()
            out[f"{name}.bias"] = b[i, 0].detach().cpu().clone()
        return out

    def optimizer_state_of(self, state: dict, i: int) -> dict:
        """Student i's slice of an optimiser's ``state_dict()`` over this module's parameters, as
        the same optimiser over the ordinary model would save it (Adam's ``exp_avg``, SGD's
        momentum, ...: element-wise state, so the slice is exactly the student's own)."""
        n = len(self.names)
        # the ordinary model's parameters: weight, bias per layer; here: all weights, then biases
        order = [x for k in range(n) for x in (k, n + k)]
        shapes = [s for w, b in zip(self.weights, self.biases) for s in (w.shape[1:], b.shape[2:])]
        return _slice_optimizer_state(state, i, order, shapes)


class VmapStack(nn.Module):
    """The general case: any module family, stacked with torch.func and run under vmap."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        from torch.func import stack_module_state
        self.n = len(models)
        params, buffers = stack_module_state(models)
        self.keys = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(params[k].detach().clone()) for k in self.keys)
        self.buffer_keys = list(buffers)
        for i, k in enumerate(self.buffer_keys):
            self.register_buffer(f"buf{i}", buffers[k].clone())
        # The skeleton functional_call runs; a tuple keeps it out of this module's parameters.
        self._skeleton = (copy.deepcopy(models[0]).to("meta"),)

    def _stacked_buffers(self) -> dict[str, Tensor]:
        return {k: getattr(self, f"buf{i}") for i, k in enumerate(self.buffer_keys)}

    def forward(self, x: Tensor) -> Tensor:
        from torch.func import functional_call, vmap
        base = self._skeleton[0]
        base.train(self.training)
        params = dict(zip(self.keys, self.stacked))

        def one(p, b):
            return functional_call(base, (p, b), (x,))
        return vmap(one, randomness="different")(params, self._stacked_buffers())

    def state_dict_of(self, i: int) -> dict[str, Tensor]:
        out = {k: p[i].detach().cpu().clone() for k, p in zip(self.keys, self.stacked)}
        out.update({k: b[i].detach().cpu().clone() for k, b in self._stacked_buffers().items()})
        return out

    def optimizer_state_of(self, state: dict, i: int) -> dict:
        """Student i's slice of an optimiser's ``state_dict()`` over this module's parameters. The
        stacked parameters are in the ordinary model's parameter order, one to one."""
        return _slice_optimizer_state(state, i, list(range(len(self.keys))))


def stack_students(models: list[nn.Module]) -> nn.Module:
    if all(isinstance(m, MLP) for m in models):
        return StackedMLP(models)
    return VmapStack(models)


def _slice_optimizer_state(state: dict, i: int, order: list[int],
                           shapes: list[torch.Size] | None = None) -> dict:
    """Student i's slice of an optimiser ``state_dict()`` over stacked parameters, as the same
    optimiser over the ordinary model would save it: its parameter ``new`` is stacked parameter
    ``order[new]`` (reshaped to ``shapes[new]`` when given). Element-wise state (Adam's moments,
    SGD's momentum) slices exactly; scalar state (Adam's step) is shared."""
    def part(v, new):
        if not torch.is_tensor(v):
            return copy.deepcopy(v)
        if not v.dim():                         # shared scalar state, e.g. Adam's step
            return v.clone()
        v = v[i]
        return (v.reshape(shapes[new]) if shapes is not None else v).clone()
    sliced = {new: {k: part(v, new) for k, v in state["state"][old].items()}
              for new, old in enumerate(order) if old in state["state"]}
    (group,) = state["param_groups"]            # the trainer's optimiser has one group
    return {"state": sliced, "param_groups": [{**group, "params": list(range(len(order)))}]}
