"""Small JSON files the server keeps in its data folder (the class's state, the roster): read as a
dict whatever is there (a missing or damaged file reads as empty), written atomically so that a
reader never sees half a file."""
from __future__ import annotations

import json
from pathlib import Path

from kdengine.core.checkpoints import write_bytes_atomic


def read_dict(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_dict(path: Path, data: dict) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())
