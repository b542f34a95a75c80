"""The class board: each lesson's runs as one picture, who is running or done, a CSV of the class.

A run belongs to a lesson when it was started from that lesson or under its class lock
(``RunSnapshot.lesson``; runs named ``lesson:<id>`` from before the tag count too). Sweep and
TA-gap cells never do: they fold under their sweep (:func:`~kdengine.teaching.classroom.
fold_children`). For one lesson, :func:`lesson_board` puts each student's knob (the lesson knob the
class varied most, e.g. T) against their test accuracy, with the mean and spread per value and the
student-alone level; runs on another data set than the lesson's are counted, not drawn, so a chart
never mixes data sets. Pure functions over snapshots: the Instructor and Lessons pages lay them out.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from kdengine.core.config import flatten
from kdengine.teaching.classroom import varying_knobs

if TYPE_CHECKING:
    from kdengine.run.snapshot import RunSnapshot
    from kdengine.teaching.lessons import Lesson

# What a student's latest run in a lesson says about them, in the order a board lists them.
STATES = ("running", "queued", "done", "failed", "stopped")
_STATE_OF = {"running": "running", "paused": "running", "queued": "queued", "done": "done",
             "failed": "failed", "interrupted": "failed", "stopped": "stopped"}
LESSON_PREFIX = "lesson:"


def lesson_of(run: RunSnapshot) -> str | None:
    """The lesson a run belongs to, or None (a sweep or TA-gap cell never belongs to one)."""
    if run.parent:
        return None
    if run.lesson:
        return run.lesson
    name = str(run.config.get("name") or run.name or "")
    if name.startswith(LESSON_PREFIX):
        return name[len(LESSON_PREFIX):] or None
    return None


def by_lesson(runs: Iterable[RunSnapshot]) -> dict[str, list[RunSnapshot]]:
    """lesson id -> its runs, newest first; runs of no lesson are left out."""
    out: dict[str, list[RunSnapshot]] = {}
    for r in sorted(runs, key=lambda r: -r.created):
        lid = lesson_of(r)
        if lid:
            out.setdefault(lid, []).append(r)
    return out


def accuracy(run: RunSnapshot) -> float | None:
    """The run's test accuracy: its final one when done, else its latest (None before any)."""
    v = run.summary.get("final_test_acc", run.latest.get("test_acc"))
    return float(v) if isinstance(v, (int, float)) and v == v else None


def alone_accuracy(run: RunSnapshot) -> float | None:
    """The same student trained alone (when the run trained it too)."""
    v = run.summary.get("baseline_test_acc", run.latest.get("baseline_test_acc"))
    return float(v) if isinstance(v, (int, float)) and v == v else None


def state_of(run: RunSnapshot) -> str:
    return _STATE_OF.get(run.status, run.status)


def who_is_where(runs: Iterable[RunSnapshot], labels: dict[str, str]) -> dict[str, list[str]]:
    """state -> the students whose newest run is in it ("running": ["Ana", "unnamed 1"], ...)."""
    newest: dict[str, RunSnapshot] = {}
    for r in runs:
        o = r.owner or ""
        if o not in newest or r.created > newest[o].created:
            newest[o] = r
    out: dict[str, list[str]] = {s: [] for s in STATES}
    for owner, r in newest.items():
        out.setdefault(state_of(r), []).append(labels.get(owner, owner))
    return {s: sorted(v, key=str.lower) for s, v in out.items()}


@dataclass
class Point:
    run_id: str
    owner: str
    student: str
    x: Any                   # the knob's value in this run
    acc: float | None        # test accuracy (None before the first epoch)
    state: str               # running, queued, done, failed, stopped


@dataclass
class Spread:
    """The finished runs at one knob value: how many, their mean and standard deviation (None
    with fewer than two: one run has no spread)."""
    x: Any
    n: int
    mean: float
    std: float | None


@dataclass
class LessonBoard:
    lesson: str
    knob: str | None                     # the knob on the x axis
    points: list[Point] = field(default_factory=list)
    spreads: list[Spread] = field(default_factory=list)
    mean: float | None = None            # over every finished run drawn
    std: float | None = None
    alone: float | None = None           # mean student-alone accuracy, where runs trained it
    alone_n: int = 0
    data: str | None = None              # the lesson's data set
    other_data: int = 0                  # runs on another data set: counted, not drawn

    @property
    def done(self) -> int:
        return sum(p.state == "done" for p in self.points)


def choose_knob(lesson: Lesson, runs: list[RunSnapshot]) -> str | None:
    """The lesson knob the class varied most (the most distinct values); the first knob when no
    run varied any."""
    flats = [flatten(r.config) for r in runs]
    spread = {k: len({repr(f.get(k)) for f in flats}) for k in lesson.knobs}
    best = max(lesson.knobs, key=lambda k: spread[k], default=None)
    return best if best is not None and spread[best] > 1 else (lesson.knobs or [None])[0]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def lesson_board(lesson: Lesson, runs: Iterable[RunSnapshot], labels: dict[str, str],
                 knob: str | None = None) -> LessonBoard:
    """The lesson's runs as one picture: a point per run at (knob value, test accuracy), the mean
    and spread of the finished ones per value and overall, the student-alone level."""
    runs = [r for r in runs if lesson_of(r) == lesson.id]
    data = lesson.base_config().data.name if lesson.preset() else None
    same = [r for r in runs if data is None or r.config.get("data", {}).get("name") == data]
    knob = knob or choose_knob(lesson, same)
    board = LessonBoard(lesson.id, knob, data=data, other_data=len(runs) - len(same))
    for r in sorted(same, key=lambda r: r.created):
        x = flatten(r.config).get(knob) if knob else None
        board.points.append(Point(r.run_id, r.owner or "", labels.get(r.owner or "", r.owner),
                                  x, accuracy(r), state_of(r)))
    finished = [p for p in board.points if p.state == "done" and p.acc is not None]
    by_x: dict[str, list[Point]] = {}
    for p in finished:
        by_x.setdefault(repr(p.x), []).append(p)
    for pts in by_x.values():
        mean, std = _mean_std([p.acc for p in pts])
        board.spreads.append(Spread(pts[0].x, len(pts), mean, std))
    board.spreads.sort(key=lambda s: (str(type(s.x)), s.x if s.x is not None else 0))
    board.mean, board.std = _mean_std([p.acc for p in finished])
    alone = [a for a in (alone_accuracy(r) for r in same if state_of(r) == "done") if a is not None]
    board.alone, board.alone_n = (statistics.fmean(alone) if alone else None), len(alone)
    return board


# ---- the CSV of the class -------------------------------------------------------------------------
def class_csv(runs: Iterable[RunSnapshot], labels: dict[str, str]) -> str:
    """Every run of the class, one row each: who, which lesson (or sweep), status, the knobs that
    differ between runs, test accuracy, the teacher's, the student alone's, when."""
    runs = sorted(runs, key=lambda r: r.created)
    knobs = varying_knobs([r.config for r in runs])
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["student", "lesson", "sweep", "run", "status", "method", "data", *knobs,
                "test accuracy", "teacher test accuracy", "student alone test accuracy", "started"])
    for r in runs:
        flat = flatten(r.config)
        teacher = r.summary.get("teacher_test_acc", r.latest.get("teacher_test_acc"))
        w.writerow([labels.get(r.owner or "", r.owner), lesson_of(r) or "", r.parent or "",
                    r.run_id, r.status, flat.get("method.name"), flat.get("data.name"),
                    *[_cell(flat.get(k)) for k in knobs], _cell(accuracy(r)), _cell(teacher),
                    _cell(alone_accuracy(r)),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))])
    return out.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def state_counts(runs: Iterable[RunSnapshot]) -> dict[str, int]:
    """How many runs are running (or paused), queued, done, failed, stopped."""
    c = Counter(state_of(r) for r in runs)
    return {s: c.get(s, 0) for s in STATES}
