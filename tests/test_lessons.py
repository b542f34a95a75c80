"""Lessons: files parse, links round-trip and are checked, every lesson preset runs in the engine."""
from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from kdengine import ConfigError, Engine
from kdengine.teaching.lessons import (check_knob, knob_spec, lesson_link, load_lessons, parse_lesson,
                              parse_link)

REQUIRED = ["why-temperature", "few-labels", "dark-knowledge", "decoupling", "boundary-samples",
            "teacher-too-big"]


def test_the_six_lessons_are_there_in_order_and_complete():
    lessons = load_lessons()
    ids = [l.id for l in lessons]
    assert ids[:6] == REQUIRED
    for l in lessons:
        assert l.title and l.body and l.look_for and l.question and l.answer, l.id
        assert l.knobs, l.id
        assert "chart" in l.look_for.lower() or "page" in l.look_for.lower(), l.id


def test_every_lesson_knob_is_a_real_field_of_its_preset():
    for l in load_lessons():
        if l.missing():
            continue
        cfg = l.base_config()
        values = l.knob_values()
        for k in l.knobs:
            spec = knob_spec(cfg, k)
            assert spec["path"] == k
            assert check_knob(cfg, k, values[k]) == values[k], (l.id, k)


def test_missing_parts_are_reported_not_faked(tmp_path):
    text = ("---\nid: future\norder: 9\ntitle: Future\npresets: [no-such-preset]\n"
            "page: app_pages/no_such_page.py\nmethod: no_such_method\nknobs: [train.epochs]\n"
            "question: q?\nanswer: a.\n---\nBody.\n\n## What to look for\nNothing yet.\n")
    lesson = parse_lesson(text)
    missing = " ".join(lesson.missing())
    for part in ("no-such-preset", "app_pages/no_such_page.py", "no_such_method"):
        assert part in missing
    with pytest.raises(ConfigError, match="no preset"):
        lesson.config()
    assert lesson.look_for == "Nothing yet." and lesson.body == "Body."


def test_instructor_link_round_trips_and_refuses_bad_values():
    lesson = next(l for l in load_lessons() if l.id == "few-labels")
    q = lesson_link("few-labels", {"method.params.T": 6.0, "train.epochs": 3, "data.n_labels": 100},
                    ["method.params.T", "train.epochs"])
    assert q.startswith("lesson=few-labels&lock=method.params.T,train.epochs")
    params = {k: v[-1] for k, v in parse_qs(q).items()}
    st = parse_link(params)
    assert st.lesson.id == "few-labels" and not st.problems
    assert st.locked == {"method.params.T": 6.0, "train.epochs": 3}
    assert st.values == {"data.n_labels": 100}
    cfg = lesson.config({**st.values, **st.locked})
    assert cfg.method.params.T == 6.0 and cfg.train.epochs == 3 and cfg.data.n_labels == 100
    # out of range, not a knob of this lesson, unknown lesson
    bad = parse_link({"lesson": "few-labels", "lock": "train.epochs,train.lr",
                      "train.epochs": "-4"})
    assert bad.locked == {"train.epochs": 20}          # the lesson's own value
    assert any("train.epochs" in p and ">= 1" in p for p in bad.problems)
    assert any(p.startswith("train.lr: not a knob") for p in bad.problems)
    nope = parse_link({"lesson": "no-such-lesson"})
    assert nope.lesson is None and nope.problems


def test_only_knobs_reach_the_config():
    lesson = next(l for l in load_lessons() if l.id == "few-labels")
    cfg = lesson.config({"train.lr": 5.0, "method.params.T": 2.0})
    assert cfg.train.lr == lesson.base_config().train.lr and cfg.method.params.T == 2.0


def test_every_lesson_preset_runs_to_completion_through_the_engine(runs_dir):
    """The fast CI version of each runnable lesson (its ``ci`` overrides), all through one Engine."""
    eng = Engine(max_workers=1)
    try:
        ids = {}
        for l in load_lessons():
            if l.missing():
                continue
            cfg = l.config(fast=True)
            assert cfg.name == f"lesson:{l.id}"
            ids[l.id] = eng.submit(cfg, owner="ci")
        assert set(REQUIRED) <= set(ids)
        for lid, rid in ids.items():
            assert eng.wait(rid, timeout=300) == "done", (lid, eng.snapshot(rid).error)
            snap = eng.snapshot(rid)
            assert snap.series.get("test_acc"), lid
            assert 0.0 <= snap.latest["test_acc"] <= 1.0
    finally:
        eng.shutdown()
