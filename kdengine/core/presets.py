"""Shipped presets (``assets/presets/*.yaml``): one place that lists and loads them, for the CLI
and the pages alike."""
from __future__ import annotations

from pathlib import Path

from kdengine.core.config import RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.core.paths import assets_dir


def list_presets() -> dict[str, str]:
    """Preset name -> the one-line description on its first line."""
    out = {}
    for p in sorted((assets_dir() / "presets").glob("*.yaml")):
        first = p.read_text(encoding="utf-8").splitlines()[:1]
        out[p.stem] = first[0].lstrip("# ").strip() if first else ""
    return out


def preset_path(name: str) -> Path:
    """A config file path as given, or the shipped preset of that name."""
    p = Path(name)
    if p.exists():
        return p
    cand = assets_dir() / "presets" / (name if name.endswith((".yaml", ".json")) else f"{name}.yaml")
    if cand.exists():
        return cand
    raise ConfigError("config", f"no config file or preset named {name!r}; see `presets`")


def load_preset(name: str) -> RunConfig:
    """A shipped preset by name (never a path: pages pass names chosen from ``list_presets``)."""
    names = list_presets()
    if name not in names:
        raise ConfigError("preset", f"no preset named {name!r}; available: {', '.join(names)}")
    return RunConfig.load(str(preset_path(name)))
