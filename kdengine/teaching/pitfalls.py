"""Pitfall linter: warnings about a config before it runs (shown in the CLI and the Lab).

Each check returns plain sentences; none blocks a run, since seeing the pitfall happen is often the
lesson. More checks can be added to ``CHECKS``. The checks:

* KL divergence with 'mean' reduction (divides by the class count as well as the batch): a static
  scan of the method's source (``ast``), and a runtime probe that records every ``kl_div`` call made
  during one step of the method;
* T^2 scaling off while both a soft and a hard (label) term are on;
* a teacher run in train mode or outside ``torch.no_grad()``, or one that receives gradients: the
  runtime probe runs one step of the method on tiny random models and data and watches the teacher;
* a teacher that is not clearly better than the student alone: statically (no bigger than the
  student), and from measured accuracies via :func:`teacher_gap_warning`, which the trainer calls
  once the baseline is known;
* an unlabelled transfer set with a hard weight above zero;
* a DKD warm-up that lasts half the run or more.

Which knobs are "soft", "hard" or the temperature is read from the method's declarations
(``weight_knobs``, ``label_terms``, ``temperature`` in :mod:`kdengine.methods.base`), never from
knob names.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import logging
import os
import threading
from typing import Callable

from kdengine.core.config import RunConfig
from kdengine.methods import get_method_class
from kdengine.methods.base import Method
from kdengine.teachers.student_alone import teacher_gap_warning  # noqa: F401  (re-exported: part of the linter)

# A check returns None, one warning, or a list of warnings.
CHECKS: list[Callable[[RunConfig], "str | list[str] | None"]] = []


def check(fn):
    CHECKS.append(fn)
    return fn


def _any_above_zero(params, knobs) -> bool:
    return any(Method.knob_value(params, k, 0) > 0 for k in knobs)


@check
def _t_squared_off(cfg: RunConfig):
    cls, p = get_method_class(cfg.method.name), cfg.method.params
    T = cls.temperature_of(p)
    if T is not None and cls.knob_value(p, "t_squared") is False \
            and _any_above_zero(p, cls.soft_weight_knobs()) and _any_above_zero(p, cls.label_weight_knobs()):
        return ("T² scaling is off while both soft and hard terms are on: the soft gradients shrink "
                f"by 1/T² = {1 / T ** 2:.3g}, so the hard term dominates.")
    return None


@check
def _unlabeled_hard(cfg: RunConfig):
    cls = get_method_class(cfg.method.name)
    if cfg.data.transfer == "unlabeled" and _any_above_zero(cfg.method.params, cls.label_weight_knobs()):
        return "The transfer set is unlabelled: the hard (label) weight will be forced to 0."
    return None


@check
def _teacher_not_bigger(cfg: RunConfig):
    if cfg.teacher.source != "train" or cfg.method.name == "ce":
        return None
    t, s = cfg.teacher.model, cfg.student
    if t.arch == s.arch and t.depth <= s.depth and t.width <= s.width:
        return ("The teacher is no bigger than the student: a KD demo needs a teacher that clearly "
                "beats the student alone.")
    return None


@check
def _dkd_warmup_eats_the_run(cfg: RunConfig):
    if cfg.method.name != "dkd":
        return None
    from kdengine.methods.dkd import DKDParams, warmup_epochs
    p = cfg.method.params             # typed after validate(); a plain dict before
    span = warmup_epochs(p if isinstance(p, DKDParams) else DKDParams(**p), cfg.train.epochs)
    if span >= 0.5 * cfg.train.epochs:
        return (f"DKD's warm-up lasts {span:g} of {cfg.train.epochs} epochs: the KD part is below "
                f"full weight for {span / cfg.train.epochs:.0%} of the run, which biases a "
                f"comparison against DKD. Lower the warm-up epochs or the warm-up cap.")
    return None


# ---- KL divergence reduction ----------------------------------------------------------------
KL_CALLS = ("KLDivLoss", "kl_div")
KL_MEAN_MSG = ("{where} uses KL divergence with reduction='mean', which divides by the number of "
               "classes as well as the batch: the soft term comes out C times too small. Use "
               "reduction='batchmean'.")


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def _kl_mean_lines(path: str, mtime_ns: int) -> list[int]:
    """:func:`kl_mean_calls` of a method's source file, parsed once per version of the file: the Lab
    lints on every run of its page, for every student."""
    with open(path, encoding="utf-8") as f:
        return kl_mean_calls(f.read())


def kl_mean_calls(source: str) -> list[int]:
    """Line numbers of PyTorch ``KLDivLoss(...)`` / ``kl_div(...)`` calls whose reduction is 'mean'
    (explicitly, or by default: both default to 'mean').

    ``x.kl_div(...)`` (``F.kl_div``, ``torch.kl_div``) and ``KLDivLoss`` always count; a bare
    ``kl_div(...)`` only when that name was imported from torch (kdengine.losses.logits has its own)."""
    try:
        with _PARSE_LOCK:       # CPython 3.11's ast.parse is not safe in concurrent threads
            tree = ast.parse(source)
    except SyntaxError:
        return []
    from_torch = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and (node.module or "").startswith("torch") for a in node.names}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Attribute):
            hit = fn.attr in KL_CALLS
        else:
            name = getattr(fn, "id", None)
            hit = name == "KLDivLoss" or (name == "kl_div" and name in from_torch)
        if not hit:
            continue
        red = next((k.value for k in node.keywords if k.arg == "reduction"), None)
        if red is None or (isinstance(red, ast.Constant) and red.value == "mean"):
            lines.append(node.lineno)
    return lines


@check
def _kl_mean_static(cfg: RunConfig):
    cls = get_method_class(cfg.method.name)
    try:
        path = inspect.getsourcefile(cls)
        lines = _kl_mean_lines(path, os.stat(path).st_mtime_ns) if path else []
    except (OSError, TypeError):
        return None
    if lines:
        where = f"Method {cfg.method.name!r} ({path.rsplit('/', 1)[-1]}, line {lines[0]})"
        return KL_MEAN_MSG.format(where=where)
    return None


# ---- runtime probe: one method step on tiny random models ------------------------------------
def _probe_mode(cls) -> str:
    from kdengine.methods import Method
    if cls.lint_probe:
        return cls.lint_probe
    # A method with its own setup may train things there; probing it blind could be slow.
    return "full" if cls.setup is Method.setup else "skip"


def _fake_data(shape: tuple, n_classes: int, n: int = 32):
    import torch
    from kdengine.data.datasets import DataBundle, Split
    x = torch.randn((n, *shape))
    y = torch.arange(n) % n_classes
    split = Split(x, y)
    return DataBundle(kind="2d" if tuple(shape) == (2,) else "image", input_shape=tuple(shape),
                      n_classes=n_classes, class_names=[str(i) for i in range(n_classes)],
                      teacher_train=split, transfer=split, labeled=torch.ones(n, dtype=torch.bool),
                      test=split)


def probe_method(cfg: RunConfig) -> list[str]:
    """Run one step of the configured method on tiny random data and watch the teacher.

    The probe's teacher has its gradients switched back ON after the method is built, so a method
    that runs it outside ``torch.no_grad()`` is caught however the teacher was frozen."""
    key = json.dumps({"m": cfg.method.name, "p": cfg.to_dict()["method"]["params"],
                      "s": cfg.student.__dict__,
                      "t": cfg.teacher.model.__dict__, "d": [cfg.data.name, cfg.data.n_classes],
                      "src": cfg.teacher.source}, sort_keys=True, default=str)
    if key not in _PROBE_CACHE:
        if len(_PROBE_CACHE) > 64:
            _PROBE_CACHE.clear()
        _PROBE_CACHE[key] = _probe_uncached(cfg)
    return list(_PROBE_CACHE[key])


# The Lab lints on every rerun of the page: the same config is probed once per process.
_PROBE_CACHE: dict[str, tuple[str, ...]] = {}


def _probe_uncached(cfg: RunConfig) -> tuple[str, ...]:
    cls = get_method_class(cfg.method.name)
    mode = _probe_mode(cls)
    if mode == "skip" or cfg.data.name == "text":
        return ()
    try:
        return tuple(_probe(cfg, cls, mode))
    except Exception as e:  # the probe is advice: report that it could not run, never raise
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        return (f"The pitfall probe could not run one step of {cfg.method.name!r} on random data "
                f"({type(e).__name__}{': ' + msg if msg else ''}).",)


def _probe(cfg: RunConfig, cls, mode: str) -> list[str]:
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from kdengine.methods import Batch, TrainContext
    from kdengine.models.families import build_model
    from kdengine.run.resources import data_shape

    shape, n_classes, _ = data_shape(cfg)
    dev = torch.device("cpu")
    with torch.random.fork_rng():       # the probe must not shift the caller's random stream
        torch.manual_seed(0)
        data = _fake_data(shape, n_classes)
        student = build_model(cfg.student, shape, n_classes)
        teachers = [build_model(cfg.teacher.model, shape, n_classes)] if cls.needs_teacher else []
        ctx = TrainContext(steps_per_epoch=1, epochs=1, n_classes=n_classes, input_shape=shape,
                           device=dev, data_kind=data.kind, seed=0, config=cfg)
        method = cls(student, teachers, cfg.method.params, ctx)
        if mode == "full":
            method.setup(data)
        for t in teachers:
            t.requires_grad_(True)
        seen = []
        hooks = [t.register_forward_hook(
            lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))) for t in teachers]

        class KLRecorder(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.mean_calls = 0

            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is F.kl_div and kwargs.get("reduction", "mean") == "mean" and \
                        (len(args) < 5):
                    self.mean_calls += 1
                return func(*args, **kwargs)

        batch = Batch(data.transfer.x[:8], data.transfer.y[:8], data.labeled[:8], torch.arange(8))
        try:
            method.train(True)
            with KLRecorder() as rec:
                terms = method.weigh(method.loss_terms(batch, 0))
                total = sum(terms.values())
                total.backward()
        finally:
            for h in hooks:
                h.remove()
    out = []
    if rec.mean_calls:
        out.append(KL_MEAN_MSG.format(where=f"One step of {cfg.method.name!r}"))
    if any(training for training, _ in seen):
        out.append(f"Method {cfg.method.name!r} ran the teacher in train mode (dropout and "
                   f"BatchNorm statistics change the targets); call teacher.eval().")
    if any(grad_on for _, grad_on in seen):
        out.append(f"Method {cfg.method.name!r} ran the teacher outside torch.no_grad(): it builds "
                   f"a graph through the teacher, wasting memory, and trains the teacher if its "
                   f"parameters are not frozen.")
    if any(p.grad is not None and bool(p.grad.abs().sum() > 0)
           for t in teachers for p in t.parameters()):
        out.append(f"Gradients reached the teacher's parameters in one step of "
                   f"{cfg.method.name!r}: detach the teacher's outputs.")
    return out


@check
def _method_probe(cfg: RunConfig):
    return probe_method(cfg) or None


# ---- teacher vs student alone, from measured accuracies ----------------------------------------
def lint(cfg: RunConfig) -> list[str]:
    """Every check's warnings for a config (validated here if it was not: the checks read its
    typed method knobs)."""
    cfg = cfg.validated()
    out = []
    for fn in CHECKS:
        try:
            msg = fn(cfg)
        except Exception:       # advice only: a check that breaks must not break the page or Train
            logging.getLogger(__name__).exception("lint check %s failed", fn.__name__)
            continue
        if isinstance(msg, (list, tuple)):
            out.extend(m for m in msg if m)
        elif msg:
            out.append(msg)
    return out
