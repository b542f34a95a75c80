"""Distillation methods, one module each, found by the registry at import time.

Every module in this package that defines a class decorated with ``@register`` becomes selectable by
name; adding a method is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Batch, Method, NoParams, TrainContext, get_method_class, method_names, register

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["Batch", "Method", "NoParams", "TrainContext", "get_method_class", "method_names",
           "register"]
