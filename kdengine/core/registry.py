"""The method registry. Methods register themselves with ``@register``; the registry finds them
by importing every module of the ``kdengine.methods`` package once (plugin discovery, by name, so
the config layer can validate a method's knobs without depending on the methods package).

Below it, the readers of a method's declarations (which knob weights which term, which terms need
labels, which knob is the temperature), so code under the methods package (analysis) reads them too."""
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


# ---- readers of a method's declarations (weight_knobs, label_terms, temperature; methods/base.py),
# shared by the trainer, the linter, the vectorised backend and the pages ----------------------------
def knob_value(params: Any, knob: str, default: Any = None) -> Any:
    """A knob of a Params dataclass, or of a plain dict of knobs (a stored config)."""
    if isinstance(params, dict):
        return params.get(knob, default)
    return getattr(params, knob, default)


def label_weight_knobs(cls) -> tuple[str, ...]:
    """The knobs that weight the terms needing labels (e.g. ("hard_weight",))."""
    return tuple(dict.fromkeys(cls.weight_knobs[t] for t in cls.label_terms if t in cls.weight_knobs))


def soft_weight_knobs(cls) -> tuple[str, ...]:
    """The knobs that weight the terms not needing labels (soft targets, features, ...)."""
    return tuple(dict.fromkeys(k for t, k in cls.weight_knobs.items() if t not in cls.label_terms))


def temperature_of(cfg) -> float | None:
    """The temperature a config's method trains at (its declared knob), or None when it has none
    or the method is unknown. Takes a RunConfig or its ``to_dict()`` form (a stored run)."""
    method = cfg["method"] if isinstance(cfg, dict) else cfg.method
    name, params = (method.get("name"), method.get("params") or {}) if isinstance(method, dict) \
        else (method.name, method.params)
    try:
        knob = get_method_class(name).temperature
    except KeyError:
        return None
    T = knob_value(params, knob) if knob else None
    return float(T) if isinstance(T, (int, float)) and not isinstance(T, bool) else None
