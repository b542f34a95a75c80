"""Memory estimates, so a run that cannot fit is refused before it starts, with the field to change.

The models are built on PyTorch's ``meta`` device: no memory is allocated, yet parameter counts are
exact for every family (a new family in ``models.BUILDERS`` is covered automatically) and one meta
forward pass gives the shape of every layer's output, i.e. the activations kept for backward. The
estimate is the peak of the two phases of a run:

* teacher training (``teacher.source = train``): teacher weights + grads + two Adam moments, and its
  activations for one batch;
* student training: student weights + grads + two Adam moments, the frozen teacher's weights, the
  student's activations for one batch, and the evaluation pass (no grad, chunks of 2048 samples:
  the widest layer output at that chunk size).

Data (the arrays and their normalised copies) is held throughout.
"""
from __future__ import annotations

import math
import os

from kdengine.core.config import ModelConfig, RunConfig

# data set -> (input shape, classes, samples in all); toys use data.n_samples and data.n_classes
_DATA = {"digits": ((1, 8, 8), 10, 1797), "mnist": ((1, 28, 28), 10, 70_000),
         "fashion_mnist": ((1, 28, 28), 10, 70_000), "cifar10": ((3, 32, 32), 10, 60_000),
         "cifar100": ((3, 32, 32), 100, 60_000), "text": ((32,), 6, None),
         # synthetic CIFAR: n_samples to train on plus a fifth as many to test (data/datasets.py)
         "cifar10_synthetic": ((3, 32, 32), 10, None), "cifar100_synthetic": ((3, 32, 32), 100, None)}
EVAL_CHUNK = 2048          # trainer.logits_of evaluates in chunks of this many samples
OPTIM_COPIES = 4           # weights, grads, Adam's two moments (SGD with momentum: 3)
DATA_COPIES = 3            # raw arrays, normalised copies, the transfer set on the device


def data_shape(cfg: RunConfig) -> tuple[tuple, int, int]:
    """(input shape, classes, samples) without loading the data."""
    d = cfg.data
    if d.name == "hierarchy":
        return (1, 8, 8), d.hier_classes, d.n_samples
    if d.name in _DATA:
        shape, k, n = _DATA[d.name]
        if n is None:
            n = d.n_samples + (d.n_samples // 5 if d.name.endswith("_synthetic") else 0)
        return shape, k, n
    return (2,), max(2, d.n_classes), d.n_samples


def model_footprint(mcfg: ModelConfig, shape: tuple, k: int, batch: int) -> tuple[int, int, int]:
    """(parameters, activation floats for one batch, widest layer output for one sample)."""
    import torch
    from kdengine.models.families import build_model
    with torch.device("meta"):
        model = build_model(mcfg, shape, k)
    params = sum(p.numel() for p in model.parameters())
    if mcfg.arch == "mlp":
        # Layer outputs are known without a forward pass; a meta forward would import torch's
        # decompositions (seconds on first use), paid on the first Train click of every process.
        per = [math.prod(shape)] + [mcfg.width] * (2 + (mcfg.dropout > 0)) * mcfg.depth + [k]
        return params, batch * sum(per), max(per)
    sizes: list[int] = []

    def hook(_m, _inp, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())
        elif isinstance(out, (tuple, list)):
            sizes.extend(o.numel() for o in out if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        dtype = torch.long if mcfg.arch == "transformer" else torch.float32
        x = torch.zeros((batch, *shape), dtype=dtype, device="meta")
        model(x)
        acts, widest = sum(sizes), max(sizes, default=0) // max(1, batch)
    except Exception:  # a family whose forward does not run on meta: assume a few floats per param
        acts, widest = batch * int(math.sqrt(params)) * 4, int(math.sqrt(params)) * 4
    finally:
        for h in handles:
            h.remove()
    return params, acts, widest


def estimate_parts(cfg: RunConfig, stacked: int = 1) -> dict[str, int]:
    """Bytes each knob is responsible for at the run's peak, keyed by the field to change.
    ``stacked`` students (kdengine/run/stacked.py) share the data and the teacher; each has its own
    weights, optimiser state and activations."""
    shape, k, n = data_shape(cfg)
    bs = max(1, min(cfg.train.batch_size, n))
    chunk, f32 = min(n, EVAL_CHUNK), 4
    fixed_size = cfg.data.name in _DATA and _DATA[cfg.data.name][2] is not None
    data_field = "data.name" if fixed_size else "data.n_samples"
    held = {data_field: n * math.prod(shape) * f32 * DATA_COPIES}

    def add(parts: dict, key: str, nbytes: int) -> None:
        parts[key] = parts.get(key, 0) + nbytes

    student: dict[str, int] = {}
    s_p, s_act, s_wide = model_footprint(cfg.student, shape, k, bs)
    add(student, "student.width", stacked * (s_p * f32 * OPTIM_COPIES + chunk * s_wide * f32 * 2))
    add(student, "train.batch_size", stacked * s_act * f32 * 2)   # kept for backward, and grads
    teacher: dict[str, int] = {}
    if cfg.teacher.source != "none":
        t_p, t_act, t_wide = model_footprint(cfg.teacher.model, shape, k, bs)
        add(student, "teacher.model.width", t_p * f32 + chunk * t_wide * f32 * 2)
        if cfg.teacher.source == "train":
            add(teacher, "teacher.model.width", t_p * f32 * OPTIM_COPIES)
            add(teacher, "train.batch_size", t_act * f32 * 2)
    phase = student if sum(student.values()) >= sum(teacher.values()) else teacher
    return {**held, **phase}


def estimate_bytes(cfg: RunConfig, stacked: int = 1) -> tuple[int, str]:
    """(peak bytes, the field most responsible for them)."""
    parts = estimate_parts(cfg, stacked)
    return int(sum(parts.values())), max(parts, key=parts.get)


def memory_limit(cfg: RunConfig) -> int:
    """Bytes one run may use: ``KD_MAX_RUN_GIB`` if set, else 90% of the GPU's memory for a CUDA
    run, else half the machine's RAM (a second run and the server need the rest)."""
    env = os.environ.get("KD_MAX_RUN_GIB")
    if env:
        try:
            value = float(env)
            if math.isfinite(value) and value > 0:
                return int(value * 2**30)
        except ValueError:
            pass
    if cfg.train.device != "cpu":
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(total * 0.5)
