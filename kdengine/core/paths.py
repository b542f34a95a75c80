"""The one data folder: store, checkpoints, cached teachers and data sets all live under it.

``KD_RUNS_DIR`` overrides the default ``./kd_runs``. No config value may point outside it.
"""
from __future__ import annotations

import os
from pathlib import Path

from kdengine.core.knobs import ConfigError


def data_root() -> Path:
    root = Path(os.environ.get("KD_RUNS_DIR", "kd_runs")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_relative(rel: str, field_path: str) -> str:
    """Lexical check, without touching the disk (config validation): a relative path with no
    ``..`` part, no NUL byte and no drive or home prefix. ``inside_root`` re-checks after resolving
    symlinks when the file is actually opened."""
    parts = rel.replace("\\", "/").split("/")
    if (not rel or "\x00" in rel or rel.startswith(("/", "\\", "~")) or ".." in parts
            or (len(rel) > 1 and rel[1] == ":")):
        raise ConfigError(field_path, f"must be a relative path inside the data folder (no '..', "
                                      f"no leading '/'), got {rel!r}")
    if len(rel) > 1024 or max(len(p.encode("utf-8", "surrogatepass")) for p in parts) > 255:
        raise ConfigError(field_path, f"path too long ({len(rel)} characters): {rel[:60]!r}...")
    return rel


def inside_root(rel: str, field_path: str, root: Path | None = None) -> Path:
    """Resolve ``rel`` under the data root; refuse absolute paths and ``..`` escapes."""
    root = (root or data_root()).resolve()
    check_relative(rel, field_path)
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ConfigError(field_path, f"path {rel!r} leaves the data folder {root}; use a path "
                                      f"inside it")
    return p


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"   # kdengine/core/paths.py -> repo root
