"""Widgets rendered from ``param()`` metadata, so a new method or knob needs no page edit.

``render_fields(cls, values, key_prefix)`` draws one widget per field of a params dataclass (choices
-> selectbox, bool -> toggle, int/float -> number input with the field's range and step, text ->
text input) and returns the plain values. Widget state is seeded from ``values`` only when the
widget has no state yet, so a page can reload a config by deleting the keys (``clear_keys``).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Iterable, Mapping

import streamlit as st

from kdengine import ConfigError, RunSnapshot, field_specs
from kdengine.core.knobs import _base_type, check_field


def label_of(spec: dict) -> str:
    from ui.words import field_label
    return field_label(spec["name"], spec.get("label"))


def _kind(spec: dict) -> tuple[str, bool]:
    base, optional = _base_type(spec["type"])
    if spec.get("choices") and typing.get_origin(base) in (list, tuple):
        return "multi", optional        # e.g. multi_teacher's list of teacher specs
    if spec.get("choices"):
        return "choice", optional
    if typing.get_origin(base) in (list, tuple):
        return "list", optional
    if base is bool:
        return "bool", optional
    if base is int:
        return "int", optional
    if base is float:
        return "float", optional
    return "str", optional


def _seed(kind: str, value: Any, optional: bool) -> Any:
    """Widget state of the right type (a float widget refuses an int value, and vice versa)."""
    if value is None:
        return None if optional or kind in ("int", "float") else ""
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    if kind == "list":
        return ", ".join(str(v) for v in value)
    if kind == "multi":
        return list(value)
    return value


def widget(spec: dict, key: str, value: Any, where=None, disabled: bool = False,
           format_func: Callable[[Any], str] = str) -> Any:
    """One widget for one field spec; returns its current value."""
    where = where or st
    kind, optional = _kind(spec)
    if key not in st.session_state:
        st.session_state[key] = _seed(kind, value, optional)
    from ui.words import plain
    label, help_ = label_of(spec), plain(spec.get("help") or "") or None
    if kind == "choice":
        opts = list(spec["choices"])
        if st.session_state[key] not in opts:
            st.session_state[key] = opts[0]
        return where.selectbox(label, opts, key=key, help=help_, disabled=disabled,
                               format_func=format_func)
    if kind == "multi":
        opts = list(spec["choices"])
        st.session_state[key] = [v for v in st.session_state[key] if v in opts]
        return where.multiselect(label, opts, key=key, help=help_, disabled=disabled,
                                 format_func=format_func)
    if kind == "bool":
        return where.toggle(label, key=key, help=help_, disabled=disabled)
    if kind in ("int", "float"):
        step = spec.get("step") or (1 if kind == "int" else None)
        kw: dict[str, Any] = {}
        if kind == "float":
            kw["format"] = "%g"
            kw["step"] = float(step) if step else _float_step(spec["default"])  # fixed per field
        else:
            kw["step"] = int(step)
        # No min/max on the widget: Streamlit would clamp a typed -1 back into range and the
        # page would go on with the old value. The rule is checked below and named instead.
        value = where.number_input(label, key=key, help=_with_range(help_, spec),
                                   disabled=disabled, placeholder="none" if optional else None,
                                   **kw)
        problem(spec, value, where)
        return value
    return where.text_input(label, key=key, help=help_, disabled=disabled)


def locked_widget(spec: dict, key: str, value: Any, where=None,
                  format_func: Callable[[Any], str] = str) -> Any:
    """The widget of a knob the class lock fixes: drawn disabled at ``value``, under its
    own key (the free widget's state is left alone), with a help text that says why; returns
    ``value``. The state is set on every run, so nothing but the link decides what it shows."""
    kind, optional = _kind(spec)
    st.session_state[f"{key}.locked"] = _seed(kind, value, optional)
    why = "Fixed by your instructor for this lesson: every run started here uses this value."
    widget({**spec, "help": f"{spec.get('help') or ''}\n\n{why}".strip()}, f"{key}.locked", value,
           where, disabled=True, format_func=format_func)
    return value


def _with_range(help_: str | None, spec: dict) -> str | None:
    """The field's help with its allowed range, so the rule is visible before it is broken."""
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None and hi is None:
        return help_
    rng = (f"{'>' if spec.get('min_exclusive') else '≥'} {lo:g}" if hi is None else
           f"≤ {hi:g}" if lo is None else
           f"{'(' if spec.get('min_exclusive') else '['}{lo:g}, {hi:g}]")
    return f"{help_ or ''}\n\nAllowed: {rng}.".strip()


def problem(spec: dict, value: Any, where=None) -> str | None:
    """Check one field's value against its rule; show the broken rule under the field, named by the
    field's label (the URL notice's words). Returns the message, or None."""
    from ui.words import error_text
    try:
        check_field(spec["name"], value, spec)
    except ConfigError as e:
        text = error_text(e, label_of(spec))
        (where or st).markdown(f":red[:material/error: {text}]")
        return text
    return None


def _float_step(value: Any) -> float:
    """A step of about a tenth of the value's order of magnitude (lr 0.003 -> 0.001)."""
    import math
    try:
        v = abs(float(value))
    except (TypeError, ValueError):
        return 0.1
    if v == 0 or not math.isfinite(v):
        return 0.1
    return float(10.0 ** math.floor(math.log10(v)))


def render_fields(cls, values: dict, key_prefix: str, names: Iterable[str] | None = None,
                  where=None, columns: int = 1, disabled: bool = False,
                  advanced: bool | None = None, locked: Mapping[str, Any] | None = None) -> dict:
    """Widgets for the fields of dataclass ``cls``; returns ``{name: value}`` for those drawn.

    ``names`` picks and orders fields; ``advanced`` True/False keeps only advanced / plain ones.
    ``locked``: field -> value the class lock fixes; those are drawn disabled at that value
    (:func:`locked_widget`). Nested dataclass fields are skipped (render them with their own call)."""
    specs = {s["name"]: s for s in field_specs(cls)}
    hints = typing.get_type_hints(cls)
    order = list(names) if names is not None else list(specs)
    chosen = []
    for n in order:
        s = specs[n]
        if dataclasses.is_dataclass(_base_type(hints[n])[0]) or hints[n] is dict:
            continue
        if advanced is not None and bool(s.get("advanced")) != advanced:
            continue
        chosen.append(s)
    where = where or st
    cols = where.columns(columns) if columns > 1 and chosen else [where]
    locked = locked or {}
    out = {}
    for i, s in enumerate(chosen):
        key, col = f"{key_prefix}{s['name']}", cols[i % len(cols)]
        out[s["name"]] = (locked_widget(s, key, locked[s["name"]], col) if s["name"] in locked else
                          widget(s, key, values.get(s["name"], s["default"]), col, disabled))
    return out


def clear_keys(prefix: str) -> None:
    """Forget widget state under ``prefix`` so the next render seeds it from a new config."""
    for k in [k for k in st.session_state if isinstance(k, str) and k.startswith(prefix)]:
        del st.session_state[k]


def run_label(r: RunSnapshot) -> str:
    """'20250101-120000-abc123 · hinton · digits · done' for pickers and tables."""
    acc = r.summary.get("final_test_acc")
    acc_txt = f" · {acc:.1%}" if isinstance(acc, (int, float)) else ""
    name = f" · {r.name}" if r.name else ""
    return (f"{r.run_id} · {r.config.get('method', {}).get('name', '?')} · "
            f"{r.config.get('data', {}).get('name', '?')} · {r.status}{acc_txt}{name}")


def run_picker(runs: list[RunSnapshot], key: str, label: str = "Run", default: str | None = None,
               where=None, help: str | None = None,
               label_fn: Callable[[RunSnapshot], str] | None = None) -> str | None:
    """A selectbox over runs (light snapshots); returns the chosen run id."""
    where = where or st
    ids = [r.run_id for r in runs]
    if not ids:
        where.info("No runs yet: train one in the Lab.", icon=":material/info:")
        return None
    labels = {r.run_id: (label_fn or run_label)(r) for r in runs}
    if key in st.session_state and st.session_state[key] not in ids:
        del st.session_state[key]
    if key not in st.session_state:
        st.session_state[key] = default if default in ids else ids[0]
    return where.selectbox(label, ids, key=key, format_func=lambda i: labels.get(i, i), help=help)


def confirm(key: str, prompt: str, action: Callable[[], None], label: str = "Yes, do it",
            where=None) -> None:
    """Two-step confirmation: after the first button set ``st.session_state[key] = True``; this
    draws the question with confirm / cancel buttons and runs ``action`` on confirm."""
    where = where or st
    if not st.session_state.get(key):
        return
    where.warning(prompt, icon=":material/warning:")
    c1, c2 = where.columns(2)
    if c1.button(label, key=f"{key}_yes", type="primary"):
        st.session_state[key] = False
        action()
        st.rerun()
    if c2.button("Cancel", key=f"{key}_no"):
        st.session_state[key] = False
        st.rerun()


def field(cls, name: str, values: dict, key_prefix: str, where=None,
          locked: Mapping[str, Any] | None = None, **kw) -> Any:
    """The widget of one named field of ``cls`` (e.g. a selectbox with a custom ``format_func``);
    drawn locked when ``locked`` (field -> value) names it."""
    spec = next(s for s in field_specs(cls) if s["name"] == name)
    if locked and name in locked:
        return locked_widget(spec, f"{key_prefix}{name}", locked[name], where,
                             kw.get("format_func", str))
    return widget(spec, f"{key_prefix}{name}", values.get(name, spec["default"]), where, **kw)


def launch_experiment(key: str, start: Callable[[], Any]) -> None:
    """Start a sweep or a search (``start()`` returns it) and keep its id in
    ``st.session_state[key]``; a refusal is shown in the page, naming the field."""
    from ui.words import error_text
    try:
        st.session_state[key] = start().id
    except ConfigError as e:
        st.error(error_text(e), icon=":material/error:")


def stored_sweep_picker(store, kind: str, key: str, label: str, limit: int = 50) -> str | None:
    """Pick one of the stored sweeps of ``kind`` (grids or TA-gap experiments), newest first; the
    choice lives in ``st.session_state[key]``. Returns the chosen id, or None when there are none."""
    stored = store.list_sweeps(kind=kind, limit=limit)
    if not stored:
        return None
    names = {r["id"]: f"{r['id']} · {r['name']}" for r in stored}
    if st.session_state.get(key) not in names:
        st.session_state[key] = stored[0]["id"]
    # labels must not change while a page is open (status is in the progress line)
    return st.selectbox(label, list(names), key=key, format_func=names.get)
