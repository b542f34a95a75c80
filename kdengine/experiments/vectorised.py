"""Many small students of one architecture trained in one pass: one batch, one teacher forward.

A sweep over method knobs (T x soft weight, ...) trains the same student on the same batches many
times; only the loss differs. Here N students are stacked along a leading axis and trained together:

* MLPs become :class:`StackedMLP` — stacked weights and ``torch.baddbmm``. Measured on a 2-core CPU
  (digits, 16 MLP-32 students): 2.6x one run, against 4.7x for ``torch.func.vmap(grad)``
  (DESIGN.md section 5).
* Any other family goes through :class:`VmapStack` (``torch.func.stack_module_state`` +
  ``vmap(functional_call)``, BatchNorm buffers included).

Either way the per-student losses are summed and one ``backward`` / one optimiser step updates all
students: a student's loss depends only on its own slice of the stacked tensors, so its gradient is
exactly the one it would get alone, and Adam/SGD are element-wise, so each slice keeps its own
optimiser state. Every student is built, seeded and fed batches exactly as :class:`Trainer` would,
so a vectorised cell matches the same cell run alone (tests/test_vectorised.py checks both claims).
Results are ordinary runs in the store: metrics, summary and a student checkpoint each.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdengine.core.config import RunConfig, config_hash
from kdengine.data.datasets import load_data
from kdengine.methods import get_method_class
from kdengine.methods.base import knob_value, temperature_of
from kdengine.models.families import MLP, build_model, count_params, model_label
from kdengine.core.store import Store
from kdengine.teachers.sources import get_teacher
from kdengine.core.checkpoints import save_checkpoint
from kdengine.run.trainer import choose_device, make_optimizer, make_scheduler, seed_everything, versions

from kdengine.models import logits_of

# Methods whose loss is written below in stacked form. Others run through the local backend.
SUPPORTED = ("hinton", "ce", "logit_mse")


def group_key(cfg: RunConfig) -> str:
    """Cells that differ only in ``method.params`` share batches, teacher and init: one pass."""
    d = cfg.semantic_dict()
    d["method"] = {"name": d["method"]["name"]}
    return config_hash(d)


def can_vectorise(cfg: RunConfig) -> bool:
    return cfg.method.name in SUPPORTED and cfg.student.arch != "transformer"


# ---------------------------------------------------------------------------------------------
# stacked students
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


# ---------------------------------------------------------------------------------------------
# stacked losses: one value per student, each equal to the method's own loss for that student
# ---------------------------------------------------------------------------------------------
@dataclass
class Knobs:
    """Per-student method knobs as (N,) tensors."""
    method: str
    T: Tensor
    soft: Tensor
    hard: Tensor
    t_sq: Tensor          # 1 where the soft term is multiplied by T^2
    mse: Tensor

    @classmethod
    def from_configs(cls, cfgs: list[RunConfig], device) -> "Knobs":
        """Read through the method's declarations: its temperature knob and the knob weighting
        each term (a term with no declared knob has weight 1, as in the trainer)."""
        method_cls = get_method_class(cfgs[0].method.name)

        def col(values):
            return torch.tensor([float(v) for v in values], device=device)

        def weight(term):
            return col(method_cls.weights_of(c.method.params).get(term, 1.0) for c in cfgs)
        return cls(method_cls.name, col(temperature_of(c) or 1.0 for c in cfgs), weight("kd"),
                   weight("ce"), col(knob_value(c.method.params, "t_squared", True) for c in cfgs),
                   weight("mse"))


def stacked_hard_ce(logits: Tensor, y: Tensor, labeled: Tensor) -> Tensor:
    """Per-student cross-entropy, normalised like ``Method.hard_ce`` (labelled samples only)."""
    n, b, c = logits.shape
    ce = F.cross_entropy(logits.reshape(n * b, c), y.clamp_min(0).repeat(n),
                         reduction="none").view(n, b)
    lab = labeled.to(ce.dtype)
    return (ce * lab).sum(-1) / lab.sum().clamp_min(1)


def stacked_terms(logits: Tensor, teacher: Tensor | None, y: Tensor, labeled: Tensor,
                  k: Knobs) -> dict[str, Tensor]:
    """Already-weighted loss terms, each of shape (N,), named as the methods name them."""
    terms: dict[str, Tensor] = {}
    if k.method == "hinton":
        T = k.T.view(-1, 1, 1)
        log_pt = F.log_softmax(teacher.detach().unsqueeze(0) / T, dim=-1)
        log_ps = F.log_softmax(logits / T, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean(-1)
        factor = torch.where(k.t_sq > 0, k.T * k.T, torch.ones_like(k.T))
        terms["kd"] = k.soft * factor * kl
    elif k.method == "logit_mse":
        mse = (logits - teacher.detach().unsqueeze(0)).pow(2).mean(dim=(1, 2))
        terms["mse"] = k.mse * mse
    if bool((k.hard > 0).any()):
        terms["ce"] = k.hard * stacked_hard_ce(logits, y, labeled)
    return terms


# ---------------------------------------------------------------------------------------------
# one vectorised pass over a group of cells
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _stacked_logits(model: nn.Module, x: Tensor, device, chunk: int = 2048) -> Tensor:
    model.eval()
    out = torch.cat([model(x[i:i + chunk].to(device)).float() for i in range(0, len(x), chunk)], 1)
    model.train()
    return out


@torch.no_grad()
def _evaluate(model, data, device, t_test: Tensor | None, max_train: int = 5000) -> list[dict]:
    """Per-student dicts of test_acc, train_acc, agreement, kl_test (as Trainer's evaluate)."""
    s_test = _stacked_logits(model, data.test.x, device)
    y = data.test.y.to(device)
    out = {"test_acc": (s_test.argmax(-1) == y).float().mean(-1)}
    n = min(len(data.transfer), max_train)
    s_tr = _stacked_logits(model, data.transfer.x[:n], device)
    out["train_acc"] = (s_tr.argmax(-1) == data.transfer.y[:n].to(device)).float().mean(-1)
    if t_test is not None:
        out["agreement"] = (s_test.argmax(-1) == t_test.argmax(-1)).float().mean(-1)
        log_pt = F.log_softmax(t_test, -1)
        out["kl_test"] = (log_pt.exp() * (log_pt - F.log_softmax(s_test, -1))).sum(-1).mean(-1)
    cols = {k: v.cpu().tolist() for k, v in out.items()}
    return [{k: cols[k][i] for k in cols} for i in range(s_test.shape[0])]


def train_group(cfgs: list[RunConfig], run_ids: list[str], store: Store,
                should_stop: Callable[[], bool] | None = None,
                on_epoch: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """Train cells that share everything but ``method.params`` in one pass; write them as runs.

    ``run_ids`` are rows already in the store (status queued). Returns each cell's summary."""
    cfgs = [c.copy().validated() for c in cfgs]
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("a vectorised group must differ only in method.params")
    if not all(can_vectorise(c) for c in cfgs):
        raise ValueError(f"vectorised training supports {', '.join(SUPPORTED)} on non-text data")
    should_stop = should_stop or (lambda: False)
    tc = cfgs[0].train
    dev = choose_device(tc.device)
    t0 = time.perf_counter()
    for rid in run_ids:
        store.set_status(rid, "running")
    try:
        summaries = _train(cfgs, run_ids, store, dev, should_stop, on_epoch, t0)
    except Exception as e:
        msg = "stopped by the user" if isinstance(e, InterruptedError) else f"{type(e).__name__}: {e}"
        for rid in run_ids:
            if store.get_run(rid)["status"] == "running":
                store.set_status(rid, "stopped" if isinstance(e, InterruptedError) else "failed", msg)
        raise
    return summaries


def _train(cfgs, run_ids, store, dev, should_stop, on_epoch, t0) -> list[dict]:
    cfg0, tc = cfgs[0], cfgs[0].train
    n_st = len(cfgs)
    data = load_data(cfg0.data)
    method_cls = get_method_class(cfg0.method.name)
    head: dict = {"method": method_cls.name, "vectorised": n_st}
    teacher_x = t_test = None
    if method_cls.needs_teacher:
        teacher, info = get_teacher(cfg0, data, dev, should_stop=should_stop)
        head.update(teacher_label=info["label"], teacher_test_acc=info["test_acc"],
                    teacher_params=count_params(teacher), teacher_cached=info["cached"])
        teacher_x = logits_of(teacher, data.transfer.x, dev)   # one teacher forward for all
        t_test = logits_of(teacher, data.test.x, dev)
        store.add_metrics_many((rid, 0, 0.0, {"teacher_test_acc": info["test_acc"]}) for rid in run_ids)
    if tc.baseline:
        from kdengine.teachers.baselines import baseline_accuracy
        acc, _ = baseline_accuracy(cfg0, data, dev)
        head["baseline_test_acc"] = acc
        store.add_metrics_many((rid, 0, 0.0, {"baseline_test_acc": acc}) for rid in run_ids)
    # Same seed and build order as Trainer._train_student: every cell starts from its own run's init.
    models = []
    for _ in cfgs:
        seed_everything(tc.seed)
        models.append(build_model(cfg0.student, data.input_shape, data.n_classes))
    head.update(student_label=model_label(cfg0.student), student_params=count_params(models[0]))
    stack = stack_students(models).to(dev)
    knobs = Knobs.from_configs(cfgs, dev)
    if data.n_labeled == 0:       # as Method.zero_label_terms: no labels, no hard term
        knobs.hard = torch.zeros_like(knobs.hard)
    n = len(data.transfer)
    bs = min(tc.batch_size, n)
    spe = max(1, n // bs)
    total_steps = spe * tc.epochs
    opt = make_optimizer(tc, list(stack.parameters()))
    sched = make_scheduler(tc, opt, total_steps)
    X, Y, L = data.transfer.x.to(dev), data.transfer.y.to(dev), data.labeled.to(dev)
    gen = torch.Generator().manual_seed(tc.seed)
    finals: list[dict] = [{} for _ in cfgs]
    window: dict[str, list[Tensor]] = {}
    step, win_start, t_loop = 0, 0, time.perf_counter()
    stack.train()
    for epoch in range(tc.epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for i in range(spe):
            if should_stop():
                raise InterruptedError("stopped")
            idx = perm[i * bs:(i + 1) * bs]
            logits = stack(X[idx])
            terms = stacked_terms(logits, None if teacher_x is None else teacher_x[idx], Y[idx],
                                  L[idx], knobs)
            total = sum(t.sum() for t in terms.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if sched is not None:
                sched.step()
            for k, v in terms.items():
                window.setdefault(k, []).append(v.detach())
            step += 1
            if step - win_start >= tc.log_every or i == spe - 1:
                _flush(window, cfgs, run_ids, store, step, spe, total_steps, opt, t_loop, bs)
                window, win_start = {}, step
        evals = _evaluate(stack, data, dev, t_test)
        store.add_metrics_many((rid, step, float(epoch + 1), ev) for rid, ev in zip(run_ids, evals))
        for ev, fin in zip(evals, finals):
            fin.update({f"final_{k}": v for k, v in ev.items()})
        if on_epoch:
            on_epoch(epoch + 1, evals)
    elapsed = time.perf_counter() - t0
    out = []
    for j, (rid, cfg) in enumerate(zip(run_ids, cfgs)):
        summary = {**head, **finals[j], "elapsed_s": elapsed}
        save_checkpoint(store.checkpoint_path(rid), {
            "state_dict": stack.state_dict_of(j), "epoch": tc.epochs, "step": step,
            "config_hash": cfg.hash, "vectorised": True})
        store.set_summary(rid, summary)
        store.set_status(rid, "done")
        out.append(summary)
    return out


def _flush(window, cfgs, run_ids, store, step, spe, total_steps, opt, t_loop, bs) -> None:
    """One device sync for all students' loss windows; one metrics row set per student."""
    means = {k: torch.stack(v).float().mean(0).cpu() for k, v in window.items()}
    elapsed = time.perf_counter() - t_loop
    rate = step / elapsed if elapsed > 0 else 0.0
    common = {"lr": opt.param_groups[0]["lr"], "samples_per_s": rate * bs, "elapsed_s": elapsed,
              "eta_s": (total_steps - step) / rate if rate > 0 else float("nan"),
              "progress": step / total_steps}
    items = []
    for j, rid in enumerate(run_ids):
        vals = {f"loss/{k}": float(m[j]) for k, m in means.items()}
        bad = [k for k, v in vals.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{bad[0]} of cell {j} became {vals[bad[0]]} near step {step}; "
                                     f"try a smaller learning rate")
        vals["loss/total"] = sum(vals.values())
        items.append((rid, step, step / spe, {**vals, **common}))
    store.add_metrics_many(items)


def create_runs(cfgs: list[RunConfig], store: Store, owner: str = "", parent: str | None = None,
                names: list[str] | None = None) -> list[str]:
    """Queued store rows for cells a vectorised (or remote) backend will fill in."""
    names = names or [c.name for c in cfgs]
    return [store.create_run(c.to_dict(), c.hash, owner=owner, name=nm, versions=versions(),
                             parent=parent) for c, nm in zip(cfgs, names)]
