"""Declarative knobs: a dataclass field that carries its own range, choices and help text.

Every config dataclass (and every method's ``Params``) is built from :func:`param` fields, so the
same metadata drives validation (``validate_dataclass``), the CLI ``--set`` parser and the widgets the
Lab renders. Adding a knob to a method therefore needs no page or CLI edit. ``temperature_knob`` and
``weight_knob`` are the two knobs nearly every method has.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import MISSING, field, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is not allowed. ``field`` is the dotted path of the bad field."""

    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field = field_path
        self.message = message


def param(default: Any = MISSING, *, min: float | None = None, max: float | None = None,
          min_exclusive: bool = False, choices: list | tuple | None = None, help: str = "",
          label: str | None = None, step: float | None = None, default_factory: Any = MISSING,
          advanced: bool = False) -> Any:
    """A dataclass field with validation/UI metadata."""
    meta = {"min": min, "max": max, "min_exclusive": min_exclusive,
            "choices": tuple(choices) if choices is not None else None,
            "help": help, "label": label, "step": step, "advanced": advanced}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_specs(cls_or_obj) -> list[dict]:
    """Plain description of each knob of a params dataclass (for the UI and the CLI help)."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = _type_hints(cls)
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        out.append({"name": f.name, "type": hints.get(f.name, Any), "default": default,
                    **{k: f.metadata.get(k) for k in
                       ("min", "max", "min_exclusive", "choices", "help", "label", "step", "advanced")}})
    return out


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """typing.get_type_hints, cached: with string annotations it compiles every one on each call,
    which was most of the cost of validating a config (the app validates on every rerun)."""
    return typing.get_type_hints(cls)


def _base_type(tp):
    """int | None -> (int, True); list[int] -> (list, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def coerce_value(path: str, value: Any, tp) -> Any:
    """Convert a plain value (from JSON, YAML, a URL or a widget) to the field's type, or raise."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(path, "a value is required, got None")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (inner,) = typing.get_args(base)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {value!r}")
        return [coerce_value(f"{path}[{i}]", v, inner) for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ConfigError(path, f"must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return _number(path, value, int, (int,), "an integer")
    if base is float:
        return _number(path, value, float, (int, float), "a number")
    if base is str:
        if isinstance(value, str):
            try:
                value.encode("utf-8")   # a lone surrogate (JSON "\ud800") breaks YAML, URLs, paths
            except UnicodeEncodeError:
                raise ConfigError(path, f"is not valid Unicode text: {value!r}") from None
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"must be text, got {value!r}")
    return value


def _number(path: str, value: Any, kind: type, accepted: tuple, what: str):
    """``value`` as ``kind`` (int or float): a number of an accepted type or its text; never a bool
    (True is an int in Python, and would silently become 1)."""
    if not isinstance(value, bool):
        if isinstance(value, accepted):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                pass
    raise ConfigError(path, f"must be {what}, got {value!r}")


def check_field(path: str, value: Any, meta: dict) -> None:
    """Range and choice checks from a field's metadata."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if v not in choices:
                raise ConfigError(path, f"must be one of {', '.join(map(str, choices))}; got {v!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    name = path.rsplit(".", 1)[-1]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"{name} must be a finite number, got {value}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise ConfigError(path, f"{name} must be > {lo}, got {value}")
        if not meta.get("min_exclusive") and not value >= lo:
            raise ConfigError(path, f"{name} must be >= {lo}, got {value}")
    if hi is not None and not value <= hi:
        raise ConfigError(path, f"{name} must be <= {hi}, got {value}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a plain dict, coercing and range-checking every field.

    Unknown keys are an error (a typo must not be silently ignored)."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)   # a typed instance (of cls, or another method's knobs)
    if not isinstance(data, dict):
        raise ConfigError(path or cls.__name__, f"must be a mapping of fields, got {type(data).__name__}")
    hints = _type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}",
                          f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if not f.init or f.name not in data:
            continue
        fpath = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        sub = _base_type(tp)[0]
        if dataclasses.is_dataclass(sub):
            kwargs[f.name] = from_dict(sub, data[f.name], fpath)
        else:
            kwargs[f.name] = coerce_value(fpath, data[f.name], tp)
    obj = cls(**kwargs)
    validate_dataclass(obj, path)
    return obj


def validate_dataclass(obj, path: str = "") -> None:
    """Check every field of ``obj`` (recursively) against its metadata."""
    hints = _type_hints(type(obj))
    for f in fields(obj):
        fpath = f"{path}.{f.name}" if path else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate_dataclass(value, fpath)
            continue
        value = coerce_value(fpath, value, hints[f.name])
        setattr(obj, f.name, value)
        check_field(fpath, value, f.metadata)


# ---- knob factories: the knobs most methods share, with one range each ------------------------
def temperature_knob(default: float = 4.0, help: str = "Temperature of the softmax on both teacher "
                     "and student logits.", **kw) -> Any:
    """The softmax temperature T (> 0). Declare it on the method as ``temperature = "T"``."""
    return param(default, min=0.0, min_exclusive=True, max=100.0, step=0.5, help=help, **kw)


def weight_knob(default: float, label: str | None = None, help: str = "", *, step: float = 0.05,
                max: float = 100.0, **kw) -> Any:
    """A loss weight (>= 0). Declare which term it weights in the method's ``weight_knobs``."""
    return param(default, min=0.0, max=max, step=step, label=label, help=help, **kw)
