"""Getting a teacher: train one now (cached under its config hash), load a shipped one, or a checkpoint.

Teachers come back in eval mode with gradients off. Checkpoints are loaded with
``weights_only=True``: a file can carry tensors and plain data, never code.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import torch
from torch import nn

from kdengine.core.checkpoints import (CheckpointError, load_state_into, read_run_checkpoint,
                                       safe_load, save_checkpoint)
from kdengine.core.config import ModelConfig, RunConfig
from kdengine.data.datasets import DataBundle
from kdengine.models.families import build_model, model_label
from kdengine.core.knobs import ConfigError
from kdengine.core.paths import assets_dir, data_root, inside_root
from kdengine.teachers.fitting import accuracy, bf16_autocast, fit_supervised
from kdengine.teachers.keys import teacher_key


def get_teacher(cfg: RunConfig, data: DataBundle, device: torch.device,
                progress: Callable[[float, str], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[nn.Module, dict]:
    """Return (teacher in eval mode, info dict with label, test accuracy, source, cached)."""
    t = cfg.teacher
    if t.source in ("train", "checkpoint") and t.checkpoint.startswith("hf:"):
        from kdengine.teachers.hf import get_hf_teacher   # optional Hugging Face teacher (text data)
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
                       cfg.train.batch_size, cfg.data.seed, device, progress, should_stop,
                       bf16_autocast(cfg.train, device))
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
    from kdengine.core.store import Store
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
    load_state_into(model, read_run_checkpoint(store.checkpoint_path(run_id)).state_dict,
                    f"the student of run {run_id}")
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


# What fixes a data set's validation split: the raw training set and the carve (datasets._carve_val).
_VAL_SPLIT_KEYS = ("name", "n_samples", "noise", "n_classes", "hier_classes", "hier_superclasses",
                   "test_fraction", "seed", "val_fraction")


def _same_val_split(theirs: dict, ours) -> bool:
    """Whether a data config (a stored plain dict) held out the same validation split as ``ours``
    (a DataConfig): then neither its teacher nor its student trained on those samples."""
    from dataclasses import asdict
    from kdengine.core.config import DataConfig
    theirs = {**asdict(DataConfig()), **theirs}        # keys added later are at their defaults
    return bool(ours.val_fraction) and all(theirs[k] == getattr(ours, k) for k in _VAL_SPLIT_KEYS)


def validation_overlap(cfg: RunConfig, store=None, _seen: tuple = ()) -> str:
    """Why ``cfg``'s teacher may have trained on ``cfg``'s validation split, in one line; "" when
    it cannot have (a teacher trained here never sees that split, nor does the student of a stored
    run that held out the same split from a teacher that could not have seen it either)."""
    t = cfg.teacher
    seen = "it may have seen the validation samples the trials are judged on, so val_acc can favour " \
           "knobs that copy it closely. A teacher trained here never sees them."
    if t.source in ("train", "none"):
        return ""
    if t.source == "checkpoint":
        return f"The teacher comes from the checkpoint {t.checkpoint}, which does not say what it " \
               f"was trained on: {seen}"
    if t.source == "shipped":
        card = shipped_teachers().get(t.checkpoint, {})
        if _same_val_split(card.get("data_config", {}), cfg.data):
            return ""
        return f"The teacher is the shipped {t.checkpoint!r}, trained on the whole training set " \
               f"(no validation split held out): {seen}"
    if store is None:
        from kdengine.core.store import Store
        store = Store()
    row = store.get_run(t.checkpoint)
    if row is None:
        return f"The teacher is the student of run {t.checkpoint}, which is not in this store, so " \
               f"what it was trained on cannot be checked: {seen}"
    if t.checkpoint in _seen or not _same_val_split(row["config"].get("data", {}), cfg.data):
        return f"The teacher is the student of run {t.checkpoint}, which did not hold out this " \
               f"validation split: {seen}"
    try:
        theirs = RunConfig.from_dict(row["config"])
    except ConfigError:
        return f"The teacher is the student of run {t.checkpoint}, whose config no longer loads, " \
               f"so its teacher cannot be checked: {seen}"
    if validation_overlap(theirs, store, _seen + (t.checkpoint,)):
        return f"The teacher is the student of run {t.checkpoint}, whose own teacher may have " \
               f"seen the validation split: {seen}"
    return ""
