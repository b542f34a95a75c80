"""The one data folder: store, checkpoints, cached teachers and data sets all live under it.

``KD_RUNS_DIR`` overrides the default ``./kd_runs``. No config value may point outside it.
"""
from __future__ import annotations

import os
from pathlib import Path

from .params import ConfigError


def data_root() -> Path:
    root = Path(os.environ.get("KD_RUNS_DIR", "kd_runs")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def inside_root(rel: str, field_path: str, root: Path | None = None) -> Path:
    """Resolve ``rel`` under the data root; refuse absolute paths and ``..`` escapes."""
    root = (root or data_root()).resolve()
    if not rel or "\x00" in rel:
        raise ConfigError(field_path, f"must be a path inside the data folder, got {rel!r}")
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ConfigError(field_path, f"path {rel!r} leaves the data folder {root}; use a path "
                                      f"inside it")
    return p


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"
