"""Page state in the URL: plain ``key=value`` query params, never pickles.

A Lab setup is written as the dotted config fields that differ from the defaults
(``?method.params.T=8&train.epochs=5``), so a copied link opens the same setup. Reading is forgiving:
each bad value falls back to its default and is listed in a visible notice, instead of failing the
page. The pure functions here need no Streamlit; ``show_url_notice`` renders the notice.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from kdengine import ConfigError, MethodConfig, RunConfig, flatten, list_presets, load_preset  # noqa: F401

# Query params that are not config fields (owner id, page-specific selections).
RESERVED = {"sid", "preset", "run", "i", "T", "embed", "embed_options", "student", "tok", "lesson", "lock"}
# Applied first: other fields are checked against them (method knobs belong to the method name,
# model families to the data set).
_FIRST = ("method.name", "data.name")


def format_value(v: Any) -> str:
    """A plain, round-trippable text form: true/false, repr for floats, 'none' for None."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return ",".join(format_value(x) for x in v)
    return str(v)


def defaults_for(method: str) -> RunConfig:
    """The default config with the given method (and that method's default knobs)."""
    try:
        return RunConfig(method=MethodConfig(name=method)).validate()
    except ConfigError:
        return RunConfig().validate()


def config_to_query(cfg: RunConfig) -> dict[str, str]:
    """The fields of ``cfg`` that differ from the defaults, as plain strings (``method.name`` is
    always written so the method knobs can be read back)."""
    base = flatten(defaults_for(cfg.method.name).to_dict())
    out = {}
    for k, v in flatten(cfg.to_dict()).items():
        if k == "method.name" or base.get(k, object()) != v:
            out[k] = format_value(v)
    return out


def _parse(value: str) -> Any:
    return None if value.strip().lower() in ("none", "null") else value


def config_from_query(params: Mapping[str, Any], base: RunConfig | None = None
                      ) -> tuple[RunConfig, list[str]]:
    """Build a config from query params. Returns (config, problems): each problem names a field
    whose value was refused (and left at its default), with the reason."""
    items = {k: (v[-1] if isinstance(v, list) else v) for k, v in params.items()
             if k not in RESERVED}
    cfg = (base or RunConfig()).copy().validate()
    problems: list[str] = []
    if "method.name" in items:
        name = items.pop("method.name")
        try:
            cfg = defaults_for_existing(cfg, str(name))
        except ConfigError as e:
            problems.append(f"{e.field or 'method.name'}: {e.message}")
    ordered = sorted(items, key=lambda k: (k not in _FIRST, k))
    for key in ordered:
        try:
            cfg = cfg.with_overrides({key: _parse(str(items[key]))})
        except ConfigError as e:
            problems.append(f"{key}: {e.message}" if e.field in (key, "") else
                            f"{key}: {e.field}: {e.message}")
    return cfg, problems


def defaults_for_existing(cfg: RunConfig, method: str) -> RunConfig:
    """``cfg`` with another method, whose knobs start at that method's defaults."""
    # the same rule as the CLI's method switch; knobs reset even when the name is unchanged
    return cfg.with_overrides({"method.name": method, "method.params": {}})


def read_param(params: Mapping[str, Any], key: str, default: Any, cast: Callable[[str], Any],
               check: Callable[[Any], bool] | None, problems: list[str], what: str = "") -> Any:
    """One page-level query param (not a config field) with a fallback and a recorded problem."""
    if key not in params:
        return default
    raw = params[key]
    raw = raw[-1] if isinstance(raw, list) else raw
    try:
        value = cast(raw)
        if check is None or check(value):
            return value
    except (TypeError, ValueError):
        pass
    problems.append(f"{key}: {raw!r} is not {what or 'allowed'}; using {default!r}")
    return default


def show_url_notice(problems: list[str]) -> None:
    """A visible notice listing the URL values that were refused."""
    if not problems:
        return
    import streamlit as st
    from ui.words import problem_text
    st.warning("Some values in the link were not valid and were reset to their defaults:\n\n"
               + "\n".join(f"- {problem_text(p)}" for p in problems), icon=":material/link_off:")


def presets() -> dict[str, str]:
    """Shipped presets: name -> one-line description."""
    return list_presets()
