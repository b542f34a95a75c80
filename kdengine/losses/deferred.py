"""Loss terms whose values are computed when they are read, not when the step runs.

A closed-form step (:mod:`kdengine.losses.closed_form`) needs only the gradient of its weighted sum;
the terms' values are for the charts, which read them once per log window (``log_every`` steps,
``kdengine.run.trainer.read_window``). Computing them per step costs as many small operations as the
gradient itself on a small student, so such a step returns :class:`DeferredTerm` values instead: a
:class:`StepValues` keeps what the values need (the detached logits, the batch's teacher rows), and
:func:`window_values` computes a whole window's values at once, a handful of operations on the
window's rows together.

A deferred term is a value like any other to whoever reads it one at a time: ``float(term)`` or
``term.value()`` computes its step alone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class StepValues:
    """What one step's deferred terms need; a subclass says how to compute them for many steps."""

    names: tuple[str, ...] = ()

    def terms(self) -> dict[str, "DeferredTerm"]:
        return {name: DeferredTerm(self, name) for name in self.names}

    @classmethod
    def evaluate(cls, steps: list["StepValues"]) -> dict[str, Tensor]:
        """Each term's values over ``steps`` (all of this class), ``[len(steps)]`` per name."""
        raise NotImplementedError


class DeferredTerm:
    """One named term of one step, computed from its :class:`StepValues` when read."""

    __slots__ = ("source", "name")

    def __init__(self, source: StepValues, name: str):
        self.source, self.name = source, name

    def detach(self) -> "DeferredTerm":
        return self            # nothing to detach: the source holds detached tensors only

    def value(self) -> Tensor:
        return type(self.source).evaluate([self.source])[self.name][0]

    def __float__(self) -> float:
        return float(self.value())

    def __repr__(self) -> str:
        return f"DeferredTerm({self.name!r}, {type(self.source).__name__})"


def window_values(window: dict[str, list[Any]]) -> dict[str, Tensor]:
    """A log window's terms, each as the stack of its per-step values (``[steps]``, or ``[steps, S]``
    for stacked students): tensors are stacked, deferred terms computed, each kind of source once
    for all its steps in the window."""
    fast = _window_values_of_one_kind(window)
    if fast is not None:
        return fast
    sources: dict[type, dict[int, StepValues]] = {}
    for vs in window.values():
        for v in vs:
            if isinstance(v, DeferredTerm):
                sources.setdefault(type(v.source), {}).setdefault(id(v.source), v.source)
    tables: dict[int, tuple[dict[str, Tensor], int]] = {}
    for cls, by_id in sources.items():
        steps = list(by_id.values())
        table = cls.evaluate(steps)
        tables.update((id(s), (table, i)) for i, s in enumerate(steps))
    out = {}
    for k, vs in window.items():
        if not any(isinstance(v, DeferredTerm) for v in vs):
            out[k] = torch.stack(vs)
            continue
        table, first = tables[id(vs[0].source)] if isinstance(vs[0], DeferredTerm) else (None, -1)
        in_order = first == 0 and len(table[k]) == len(vs) and all(
            isinstance(v, DeferredTerm) and tables[id(v.source)][0] is table
            and tables[id(v.source)][1] == i for i, v in enumerate(vs))
        out[k] = table[k] if in_order else torch.stack([_one(v, tables) for v in vs])
    return out


def _window_values_of_one_kind(window: dict[str, list[Any]]) -> dict[str, Tensor] | None:
    """:func:`window_values` of the usual window: each term a plain tensor at every step, or deferred
    at every step with one source per step, the same sources for every deferred term (a closed-form
    step's ``kd`` and ``ce``). None otherwise, for the general pass."""
    out: dict[str, Tensor] = {}
    steps: list[StepValues] | None = None
    table: dict[str, Tensor] = {}
    for k, vs in window.items():
        if not isinstance(vs[0], DeferredTerm):
            if any(isinstance(v, DeferredTerm) for v in vs):
                return None
            out[k] = torch.stack(vs)
            continue
        if not all(isinstance(v, DeferredTerm) for v in vs):
            return None
        srcs = [v.source for v in vs]
        if steps is None:
            kind = type(srcs[0])
            if not all(type(src) is kind for src in srcs):
                return None
            steps, table = srcs, kind.evaluate(srcs)
        elif srcs != steps:      # StepValues compare by identity
            return None
        out[k] = table[k]
    return out


def _one(v: Any, tables: dict[int, tuple[dict[str, Tensor], int]]) -> Tensor:
    if not isinstance(v, DeferredTerm):
        return v
    table, i = tables[id(v.source)]
    return table[v.name][i]
