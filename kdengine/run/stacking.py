"""Stacked students: many small students of one architecture trained in one pass, one batch and one
teacher forward for all.

The students are stacked into one module whose forward returns logits with a leading student axis,
``[S, B, C]``, and :class:`StackTrainer` trains it with the ordinary
:class:`~kdengine.run.trainer.Trainer` loop: the method's own ``loss_terms`` gives every student's
terms at once (the losses broadcast over the student axis; the knobs that differ between students
come as ``[S, 1, 1]`` tensors), the trainer weighs them, sums them into one backward and one
optimiser step, reads them back once per log window and evaluates each student.

* MLPs become :class:`StackedMLP` — stacked weights and ``torch.baddbmm``.
* Any other family goes through :class:`VmapStack` (``torch.func.stack_module_state`` +
  ``vmap(functional_call)``, BatchNorm buffers included).

Two users of it: a vectorised sweep (:mod:`kdengine.experiments.vectorised`) and the engine's
cohorts of runs from different sessions (:mod:`kdengine.run.cohort`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.core.config import RunConfig, config_hash
from kdengine.methods import get_method_class
from kdengine.models import count_params
from kdengine.models.families import MLP
from kdengine.run.trainer import Control, Trainer


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
    """Why this cell cannot train as a stacked student ("" when it can)."""
    method_cls = get_method_class(cfg.method.name)
    if not method_cls.supports_stacking:
        return (f"method {method_cls.name} does not support stacked students (methods/base.py: "
                f"supports_stacking)")
    if cfg.student.arch == "transformer":
        return "transformer students (the text task) train one at a time"
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

        def part(v, shape):
            return v[i].reshape(shape).clone() if torch.is_tensor(v) and v.dim() else copy.deepcopy(v)
        sliced = {new: {k: part(v, shapes[new]) for k, v in state["state"][old].items()}
                  for new, old in enumerate(order) if old in state["state"]}
        (group,) = state["param_groups"]            # the trainer's optimiser has one group
        return {"state": sliced, "param_groups": [{**group, "params": list(range(2 * n))}]}


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


def stack_students(models: list[nn.Module]) -> nn.Module:
    if all(isinstance(m, MLP) for m in models):
        return StackedMLP(models)
    return VmapStack(models)




class StackTrainer(Trainer):
    """:class:`Trainer` on the stacked students of ``cfgs`` (one :func:`group_key`). Data, teacher,
    baseline, batches, loss, step, log windows and evaluation are the trainer's own; a subclass says
    where each student's metrics go (``_record``)."""

    def __init__(self, cfgs: list[RunConfig], control: Control | None = None):
        super().__init__(cfgs[0], control=control)
        self.cfgs = cfgs
        self.student_params: int | None = None      # one student's, once built

    def _train_student(self, data, method_cls, params, teachers, t_test_logits, t0) -> dict:
        params = stacked_params(method_cls, self.cfgs, self.device)
        summary = super()._train_student(data, method_cls, params, teachers, t_test_logits, t0)
        summary["student_params"] = self.student_params     # not the whole stack's
        return summary

    def _build_student(self, data) -> nn.Module:
        models = []
        for _ in self.cfgs:        # each seeded and built as a run of its config builds it
            models.append(Trainer._build_student(self, data))
        self.student_params = count_params(models[0])
        return stack_students(models).to(self.device)
