"""Checkpoint files: atomic writes, and loads with ``weights_only=True`` (tensors and plain data,
never code) whose errors name what is wrong."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from torch import nn


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
