"""The class board's logic, without Streamlit: runs grouped by lesson (sweep cells never), the mean
and spread per knob value, the student-alone level, who is running or done, the CSV of the class;
names unique in a class; unnamed students numbered."""
from __future__ import annotations

import csv
import io
import statistics

import pytest

from kdengine import NameTaken, Roster, RunSnapshot, by_lesson, class_csv, lesson_board, who_is_where
from kdengine.core.config import RunConfig
from kdengine.teaching.classroom import student_labels
from kdengine.teaching.lessons import get_lesson


def run(rid: str, owner: str, created: float, acc: float | None = None, status: str = "done",
        lesson: str | None = "why-temperature", parent: str | None = None, alone: float | None = None,
        data: str = "digits", **knobs) -> RunSnapshot:
    cfg = RunConfig().with_overrides({"data.name": data, **knobs}).to_dict()
    summary = {} if acc is None or status != "done" else {"final_test_acc": acc}
    if alone is not None:
        summary["baseline_test_acc"] = alone
    return RunSnapshot(run_id=rid, owner=owner, name="", config=cfg, status=status, parent=parent,
                       created=created, lesson=lesson, summary=summary,
                       latest={} if acc is None else {"test_acc": acc})


T = "method.params.T"


def test_runs_group_by_lesson_and_sweep_cells_never_fill_it():
    runs = [run("a", "ana", 1, 0.8), run("b", "bea", 2, 0.7, lesson="few-labels"),
            run("c", "cat", 3, 0.6, lesson=None, parent="sweep-1"),
            run("d", "dan", 4, 0.5, lesson=None)]
    old = run("e", "eve", 5, 0.9, lesson=None)
    old.config["name"] = "lesson:why-temperature"          # a run from before the lesson tag
    groups = by_lesson(runs + [old])
    assert {k: [r.run_id for r in v] for k, v in groups.items()} == {
        "why-temperature": ["e", "a"], "few-labels": ["b"]}


def test_the_board_gives_each_knob_value_its_mean_and_spread_and_the_student_alone_level():
    lesson = get_lesson("why-temperature")
    runs = [run("a", "ana", 1, 0.80, alone=0.70, **{T: 2.0}),
            run("b", "bea", 2, 0.90, alone=0.72, **{T: 2.0}),
            run("c", "cat", 3, 0.60, **{T: 8.0}),
            run("d", "dan", 4, 0.55, status="running", **{T: 8.0}),         # still training
            run("e", "eve", 5, 0.99, data="moons", **{T: 8.0}),              # another data set
            run("f", "fay", 6, 0.99, lesson="few-labels", **{T: 8.0})]       # another lesson
    labels = {"ana": "Ana", "bea": "Bea", "cat": "Cat", "dan": "unnamed 1"}
    board = lesson_board(lesson, runs, labels)
    assert board.knob == T                                    # the knob the class varied
    assert [p.run_id for p in board.points] == ["a", "b", "c", "d"]
    assert board.other_data == 1 and board.data == "digits"
    assert [p.student for p in board.points] == ["Ana", "Bea", "Cat", "unnamed 1"]
    at = {s.x: s for s in board.spreads}
    assert at[2.0].n == 2 and at[2.0].mean == pytest.approx(0.85)
    assert at[2.0].std == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert at[8.0].n == 1 and at[8.0].std is None            # one run has no spread
    assert board.mean == pytest.approx(statistics.fmean([0.8, 0.9, 0.6]))
    assert board.alone == pytest.approx(0.71) and board.alone_n == 2
    assert board.done == 3


def test_who_is_running_done_or_failed_by_their_newest_run():
    runs = [run("a1", "ana", 1, 0.8), run("a2", "ana", 5, None, status="running"),
            run("b", "bea", 2, 0.7), run("c", "cat", 3, None, status="failed"),
            run("d", "dan", 4, None, status="interrupted")]
    where = who_is_where(runs, {"ana": "Ana", "bea": "Bea", "cat": "Cat", "dan": "Dan"})
    assert where["running"] == ["Ana"] and where["done"] == ["Bea"]
    assert where["failed"] == ["Cat", "Dan"] and where["queued"] == []


def test_the_class_csv_has_a_row_per_run_with_student_lesson_knobs_and_accuracies():
    runs = [run("a", "ana", 1, 0.8, alone=0.7, **{T: 2.0}),
            run("c", "cat", 3, 0.6, lesson=None, parent="sweep-1", **{T: 8.0})]
    rows = list(csv.DictReader(io.StringIO(class_csv(runs, {"ana": "Ana", "cat": "unnamed 1"}))))
    assert [r["run"] for r in rows] == ["a", "c"]
    a, c = rows
    assert (a["student"], a["lesson"], a["sweep"], a[T]) == ("Ana", "why-temperature", "", "2")
    assert float(a["test accuracy"]) == 0.8 and float(a["student alone test accuracy"]) == 0.7
    assert (c["lesson"], c["sweep"], c["student"]) == ("", "sweep-1", "unnamed 1")
    assert "data.noise" not in a                              # only the knobs that differ


def test_a_name_is_one_students_and_a_taken_name_asks_for_the_code(tmp_path):
    book = Roster(tmp_path)
    code = book.register("a" * 12, "Ana")
    for same in ("ana", " ANA ", "A na"):
        with pytest.raises(NameTaken, match="code"):
            book.register("b" * 12, same)
    assert book.owner_for_name(" ana") == "a" * 12
    assert book.owner_for_code(code) == "a" * 12              # the code gives her identity back
    assert book.register("a" * 12, "ANA") == code             # she may re-case her own name
    book.register("b" * 12, "Bea")
    with pytest.raises(NameTaken):
        book.rename("b" * 12, "ana")
    assert len(book.names()) == 2


def test_students_without_a_name_are_numbered_not_shown_as_ids():
    runs = [run("x", "f00dcafe0001", 3), run("y", "beefbeef0002", 1), run("z", "ana", 2),
            run("w", "", 4), run("v", "beefbeef0002", 5)]
    labels = student_labels(runs, {"ana": "Ana"})
    assert labels == {"beefbeef0002": "unnamed 1", "ana": "Ana", "f00dcafe0001": "unnamed 2",
                      "": "command line"}
