"""Checkpoint files: atomic writes, and loads with ``weights_only=True`` (tensors and plain data,
never code) whose errors name what is wrong; and :class:`RunCheckpoint`, the one layout of a run's
checkpoint, whoever trained it (alone, stacked with others, in a worker process or on Ray)."""
from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    """Atomic write (:func:`write_bytes_atomic`): a crash never leaves a half-written checkpoint
    under the final name, and two runs writing the same teacher's file at once do not collide."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(path, buf.getvalue())


RUN_CHECKPOINT_FORMAT = 2


@dataclass
class RunCheckpoint:
    """A run's state at an epoch's end: what resuming needs, and the student the analysis pages
    load. Format 2; files written before it (format 1: the same names, some missing) still read."""
    config_hash: str
    epoch: int
    step: int
    state_dict: dict[str, Any]                  # the student's weights
    extra: list[dict] = field(default_factory=list)     # the method's own trainable modules
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: Any = None                             # the batch order's generator state
    torch_rng: Any = None                       # torch's global generator state
    method: dict = field(default_factory=dict)  # what a method keeps outside the optimiser
    format: int = RUN_CHECKPOINT_FORMAT

    def to_bytes(self) -> bytes:
        # the fields as they are: asdict would deep-copy every tensor only for torch.save to read it
        buf = io.BytesIO()
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, buf)
        return buf.getvalue()

    def save(self, path: Path) -> None:
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def from_payload(cls, payload: dict, what: str = "checkpoint") -> "RunCheckpoint":
        if not isinstance(payload, dict) or "state_dict" not in payload:
            raise CheckpointError(f"{what} holds no student weights")
        names = cls.__dataclass_fields__
        known = {k: v for k, v in payload.items() if k in names and v is not None}
        known.setdefault("config_hash", "")
        known.setdefault("epoch", 0)
        known.setdefault("step", 0)
        known["format"] = RUN_CHECKPOINT_FORMAT
        return cls(**known)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "checkpoint") -> "RunCheckpoint":
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{what} could not be loaded safely ({type(e).__name__})") from None
        return cls.from_payload(payload, what)


def read_run_checkpoint(path: Path) -> RunCheckpoint:
    """A run's checkpoint file, in the current layout whatever format it was written in."""
    return RunCheckpoint.from_payload(safe_load(path), f"checkpoint {path.name}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` under ``path``, never half-written (a temporary file unique to this thread, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
