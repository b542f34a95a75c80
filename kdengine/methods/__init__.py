"""Distillation methods, one module each, found by the registry at import time.

Every module in this package that defines a class decorated with ``@register`` becomes selectable by
name; adding a method is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading

from .base import Batch, Method, NoParams, TrainContext, get_method_class, method_names, register

_loaded = False
_loading = False
_lock = threading.RLock()


def _load_all() -> None:
    """Import every method module once. Threads that arrive while another is importing wait for
    it (four sessions validating their first config at once saw an empty registry otherwise); the
    importing thread itself may re-enter (a module that looks a method up at import time)."""
    global _loaded, _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:
            return
        _loading = True
        try:
            for mod in pkgutil.iter_modules(__path__):
                if not mod.name.startswith("_") and mod.name != "base":
                    importlib.import_module(f"{__name__}.{mod.name}")
        finally:
            _loading = False
            _loaded = True   # as before: a module that fails to import fails once, loudly


__all__ = ["Batch", "Method", "NoParams", "TrainContext", "get_method_class", "method_names",
           "register"]
