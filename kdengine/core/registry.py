"""The method registry. Methods register themselves with ``@register``; the registry finds them
by importing every module of the ``kdengine.methods`` package once (plugin discovery, by name, so
the config layer can validate a method's knobs without depending on the methods package).

The readers of a method's declarations (its temperature, the knobs that weight its label terms, ...)
belong to the contract (:class:`kdengine.methods.base.Method`): ``get_method_class(name)`` gives the
class, whose classmethods read them."""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

METHODS_PACKAGE = "kdengine.methods"
_REGISTRY: dict[str, Any] = {}
_loaded = False
_loading = False
_lock = threading.RLock()


def register(cls):
    """Class decorator: make a method selectable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


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
            pkg = importlib.import_module(METHODS_PACKAGE)
            for mod in pkgutil.iter_modules(pkg.__path__):
                if not mod.name.startswith("_") and mod.name != "base":
                    importlib.import_module(f"{METHODS_PACKAGE}.{mod.name}")
        finally:
            _loading = False
            _loaded = True   # as before: a module that fails to import fails once, loudly


def get_method_class(name: str):
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
