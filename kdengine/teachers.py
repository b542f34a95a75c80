"""Getting a teacher: train one now (cached under its config hash), load a shipped one, or a checkpoint.

Teachers come back in eval mode with gradients off. Checkpoints are loaded with
``weights_only=True``: a file can carry tensors and plain data, never code.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import multilabel
from .config import ModelConfig, RunConfig, config_hash
from .data import DataBundle, teacher_data_key
from .models import build_model, model_label
from .params import ConfigError
from .paths import assets_dir, data_root, inside_root


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, unsafe, or for another architecture."""


def safe_load(path: Path) -> dict:
    """torch.load with weights_only=True and errors a user can act on."""
    try:
        found = path.is_file()
    except OSError as e:     # e.g. a name longer than the file system allows
        raise CheckpointError(f"checkpoint path {str(path)[:120]!r} cannot be used: "
                              f"{e.strerror or e}") from None
    if not found:
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError...
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path.name} could not be loaded safely ({msg}); it is "
                              f"corrupt or holds objects other than tensors") from None


def load_state_into(model: nn.Module, state: dict, what: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).splitlines()
        detail = " ".join(x.strip() for x in first[:2])[:300]
        raise CheckpointError(f"{what} does not fit the chosen architecture: {detail}") from None


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic write: a crash never leaves a half-written checkpoint under the final name. The
    temporary name is unique per process and thread: two runs training the same (not yet cached)
    teacher at once both write it, and a shared temporary file made one of them fail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def teacher_key(cfg: RunConfig) -> str:
    t = cfg.teacher
    return config_hash({"data": teacher_data_key(cfg.data), "model": t.model.__dict__,
                        "epochs": t.epochs, "lr": t.lr, "batch": cfg.train.batch_size})


def fit_supervised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                   batch_size: int, seed: int, device: torch.device,
                   progress: Callable[[float, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> None:
    """Plain cross-entropy training (teachers, baselines, ladder models)."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    n = len(y)
    steps = max(1, (n + batch_size - 1) // batch_size)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            out = model(x[idx])
            loss = (multilabel.hard_loss(out, y[idx]) if y.dim() == 2    # multi-hot text labels
                    else nn.functional.cross_entropy(out, y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if should_stop and should_stop():
            raise InterruptedError("stopped")
        if progress:
            progress((ep + 1) / epochs, f"epoch {ep + 1}/{epochs}")
    opt.zero_grad(set_to_none=True)   # a teacher must not carry the last step's gradients around
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             chunk: int = 2048) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk].to(device)).cpu()
        if y.dim() == 2:   # multi-label: per-label accuracy, as the trainer reports for text
            hit = multilabel.predictions(out) == (y[i:i + chunk] > 0.5)
            correct += hit.float().mean(-1).sum().item()
        else:
            correct += (out.argmax(-1) == y[i:i + chunk]).sum().item()
    return correct / max(1, len(y))


def get_teacher(cfg: RunConfig, data: DataBundle, device: torch.device,
                progress: Callable[[float, str], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[nn.Module, dict]:
    """Return (teacher in eval mode, info dict with label, test accuracy, source, cached)."""
    t = cfg.teacher
    if t.source in ("train", "checkpoint") and t.checkpoint.startswith("hf:"):
        from .hf_text import get_hf_teacher   # optional Hugging Face teacher (text data)
        return get_hf_teacher(cfg, data, device, progress, should_stop)
    if t.source == "shipped":
        return load_shipped_teacher(t.checkpoint, cfg, data, device)
    if t.source == "checkpoint":
        path = inside_root(t.checkpoint, "teacher.checkpoint")
        model = build_model(t.model, data.input_shape, data.n_classes)
        state = safe_load(path)
        load_state_into(model, state.get("state_dict", state), f"checkpoint {path.name}")
        model.to(device).eval().requires_grad_(False)
        acc = accuracy(model, data.test.x, data.test.y, device)
        return model, {"label": model_label(t.model), "test_acc": acc, "source": "checkpoint",
                       "cached": True}
    if t.source == "run":
        return load_run_teacher(t.checkpoint, cfg, data, device)
    key = teacher_key(cfg)
    path = data_root() / "teachers" / f"{key}.pt"
    model = build_model(t.model, data.input_shape, data.n_classes)
    cached = False
    if path.exists():
        try:
            load_state_into(model, safe_load(path)["state_dict"], "cached teacher")
            cached = True
        except (CheckpointError, KeyError):
            path.unlink(missing_ok=True)   # a corrupt cache entry is retrained, not trusted
    if not cached:
        torch.manual_seed(cfg.data.seed)
        model = build_model(t.model, data.input_shape, data.n_classes)
        fit_supervised(model, data.teacher_train.x, data.teacher_train.y, t.epochs, t.lr,
                       cfg.train.batch_size, cfg.data.seed, device, progress, should_stop)
    model.to(device).eval().requires_grad_(False)
    acc = accuracy(model, data.test.x, data.test.y, device)
    if not cached:
        save_checkpoint(path, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                               "meta": json.dumps({"model": t.model.__dict__, "test_acc": acc,
                                                   "created": time.time()})})
    return model, {"label": model_label(t.model), "test_acc": acc, "source": "train",
                   "cached": cached, "key": key}


def load_run_teacher(run_id: str, cfg: RunConfig, data: DataBundle, device: torch.device):
    """The trained student of a finished stored run, as a teacher (teacher-assistant chains).

    The architecture comes from that run's own config, so ``teacher.model`` cannot disagree with the
    weights; the data set must be the one the run was trained on."""
    from .store import Store
    store = Store()
    row = store.get_run(run_id)
    if row is None:
        raise ConfigError("teacher.checkpoint", f"no stored run {run_id!r}")
    if row["status"] != "done":
        raise ConfigError("teacher.checkpoint", f"run {run_id} is {row['status']}; only a finished "
                                                f"run can teach")
    rdata = row["config"].get("data", {})
    if rdata.get("name") != cfg.data.name:
        raise ConfigError("teacher.checkpoint", f"run {run_id} was trained on {rdata.get('name')}, "
                                                f"not {cfg.data.name}")
    mcfg = ModelConfig(**row["config"]["student"])
    model = build_model(mcfg, data.input_shape, data.n_classes)
    load_state_into(model, safe_load(store.checkpoint_path(run_id))["state_dict"], f"the student of run {run_id}")
    model.to(device).eval().requires_grad_(False)
    acc = accuracy(model, data.test.x, data.test.y, device)
    return model, {"label": f"{model_label(mcfg)} (run {run_id})", "test_acc": acc, "source": "run",
                   "cached": True, "run_id": run_id}


def shipped_teachers() -> dict[str, dict]:
    """name -> meta for the teachers in assets/teachers (each a .pt with a JSON meta string)."""
    out = {}
    folder = assets_dir() / "teachers"
    for p in sorted(folder.glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
    return out


def load_shipped_teacher(name: str, cfg: RunConfig, data: DataBundle, device: torch.device):
    metas = shipped_teachers()
    if name not in metas:
        raise ConfigError("teacher.checkpoint", f"no shipped teacher {name!r}; available: "
                                                f"{', '.join(metas) or 'none'}")
    meta = metas[name]
    if meta.get("data") != cfg.data.name:
        raise ConfigError("teacher.checkpoint", f"shipped teacher {name!r} was trained on "
                                                f"{meta.get('data')}, not {cfg.data.name}")
    mcfg = ModelConfig(**meta["model"])
    model = build_model(mcfg, data.input_shape, data.n_classes)
    state = safe_load(assets_dir() / "teachers" / f"{name}.pt")
    load_state_into(model, state["state_dict"], f"shipped teacher {name}")
    model.to(device).eval().requires_grad_(False)
    acc = accuracy(model, data.test.x, data.test.y, device)
    info = {"label": f"{model_label(mcfg)} (shipped)", "test_acc": acc, "source": "shipped",
            "cached": True}
    # A teacher trained on another split may have seen today's test samples: say so.
    split = ("n_samples", "noise", "n_classes", "test_fraction", "seed")
    shipped = meta.get("data_config", {})
    if any(shipped.get(k) != getattr(cfg.data, k) for k in split if k in shipped):
        info["warning"] = (f"shipped teacher {name} was trained on a different split of "
                           f"{cfg.data.name}; its test accuracy may be optimistic")
    return model, info
