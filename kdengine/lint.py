"""Pitfall linter: warnings about a config before it runs (shown in the CLI and the Lab).

Each check returns plain sentences; none blocks a run, since seeing the pitfall happen is often the
lesson. More checks can be added to ``CHECKS``.
"""
from __future__ import annotations

from typing import Callable

from .config import RunConfig

CHECKS: list[Callable[[RunConfig], str | None]] = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def _t_squared_off(cfg: RunConfig):
    p = cfg.method.params
    if p.get("t_squared") is False and p.get("soft_weight", 0) > 0 and p.get("hard_weight", 0) > 0:
        return ("T² scaling is off while both soft and hard terms are on: the soft gradients shrink "
                f"by 1/T² = {1 / p.get('T', 1) ** 2:.3g}, so the hard term dominates.")
    return None


@check
def _unlabeled_hard(cfg: RunConfig):
    p = cfg.method.params
    if cfg.data.transfer == "unlabeled" and (p.get("hard_weight", 0) > 0 or p.get("ce_weight", 0) > 0):
        return "The transfer set is unlabelled: the hard (label) weight will be forced to 0."
    return None


@check
def _teacher_not_bigger(cfg: RunConfig):
    from .models import count_params, build_model
    if cfg.teacher.source != "train" or cfg.method.name == "ce":
        return None
    t, s = cfg.teacher.model, cfg.student
    if t.arch == s.arch and t.depth <= s.depth and t.width <= s.width:
        return ("The teacher is no bigger than the student: a KD demo needs a teacher that clearly "
                "beats the student alone.")
    return None


def lint(cfg: RunConfig) -> list[str]:
    out = []
    for fn in CHECKS:
        msg = fn(cfg)
        if msg:
            out.append(msg)
    return out
