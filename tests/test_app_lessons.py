"""AppTest of the Lessons and Instructor pages: every lesson renders, locks hold, runs show up."""
from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import AppTestError

from kdengine.teaching import lessons as lessons_mod
from kdengine.teaching.lessons import load_lessons

from conftest import app_test

LESSONS = "app_pages/lessons.py"
INSTRUCTOR = "app_pages/instructor.py"


def page(params: dict | None = None, path: str = LESSONS) -> AppTest:
    return app_test(path, query=params)


TOKEN = "test-instructor-token"


@pytest.fixture(autouse=True)
def _instructor_token(monkeypatch):
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", TOKEN)


def engine():
    from ui.engine import get_engine
    return get_engine()


@pytest.mark.parametrize("lesson", load_lessons(), ids=lambda l: l.id)
def test_every_lesson_renders_with_text_knobs_and_a_hidden_answer(lesson):
    at = page({"lesson": lesson.id})
    assert at.selectbox(key="lessons_pick").value == lesson.id
    shown = " ".join(m.value for m in at.markdown)
    assert lesson.body[:40] in shown and lesson.question[:40] in shown
    assert not at.success                                   # the answer waits to be asked for
    assert any(b.key == "lessons_start" for b in at.button) == (not lesson.missing())
    knob_keys = {w.key for w in [*at.number_input, *at.toggle, *at.selectbox]}
    assert {f"lessons.{lesson.id}.{k}" for k in lesson.knobs} <= knob_keys
    at.button(key="lessons_show").click().run()
    assert not at.exception and lesson.answer[:40] in at.success[0].value


def test_a_locked_link_cannot_be_changed_and_its_value_is_what_runs(runs_dir):
    at = page({"lesson": "why-temperature", "lock": "method.params.T,train.epochs",
               "method.params.T": "7", "train.epochs": "1", "teacher.epochs": "3", "tok": TOKEN})
    key = "lessons.why-temperature.method.params.T"
    w = at.number_input(key=key)
    assert w.value == 7.0 and w.disabled
    assert at.selectbox(key="lessons_pick").disabled          # the lesson itself is fixed too
    with pytest.raises(AppTestError):                         # no browser user can change it...
        w.set_value(9.0)
    at.session_state[key] = 9.0                               # ...and forged state is overwritten
    at.run()
    assert at.number_input(key=key).value == 7.0
    assert any("teacher epochs" in w.value for w in at.warning)   # not a knob: refused, visibly
    at.button(key="lessons_start").click().run()
    assert not at.exception and not at.error
    rid = at.session_state["lessons_run.why-temperature"]
    eng = engine()
    assert eng.wait(rid, timeout=300) == "done", eng.snapshot(rid).error
    cfg = eng.snapshot(rid).config
    assert cfg["method"]["params"]["T"] == 7.0 and cfg["train"]["epochs"] == 1
    assert cfg["name"] == "lesson:why-temperature"
    at.run()
    assert not at.exception and at.get("plotly_chart")       # the live chart of the run
    # the instructor link generator reproduces the lock
    code = at.code[0].value
    assert "lesson=why-temperature" in code and "lock=method.params.T,train.epochs" in code
    assert "method.params.T=7.0" in code


def test_unlocked_link_values_are_starting_points():
    at = page({"lesson": "few-labels", "data.n_labels": "100"})
    w = at.number_input(key="lessons.few-labels.data.n_labels")
    assert w.value == 100 and not w.disabled
    w.set_value(200).run()
    assert at.number_input(key="lessons.few-labels.data.n_labels").value == 200


def test_a_lesson_whose_parts_are_missing_says_so(tmp_path, monkeypatch):
    folder = tmp_path / "lessons"
    folder.mkdir()
    shutil.copy(lessons_mod.lessons_dir() / "1-why-temperature.md", folder)
    (folder / "9-future.md").write_text(
        "---\nid: future\norder: 9\ntitle: Future lesson\npresets: [no-such-preset]\n"
        "page: app_pages/no_such_page.py\nknobs: [train.epochs]\nquestion: Why?\nanswer: Because.\n"
        "---\nA lesson about a method that is not built.\n\n## What to look for\nLater.\n")
    monkeypatch.setattr(lessons_mod, "lessons_dir", lambda: folder)
    at = page({"lesson": "future"})
    text = " ".join(w.value for w in at.warning)
    assert "not ready" in text and "no-such-preset" in text and "no such page" in text
    assert not any(b.key == "lessons_start" for b in at.button)
    assert not at.get("plotly_chart")


def test_instructor_view_lists_every_sessions_runs(runs_dir):
    from kdengine.teaching.lessons import get_lesson
    eng = engine()
    lesson = get_lesson("why-temperature")
    ids = [eng.submit(lesson.config({"method.params.T": T}, fast=True), owner=o, name="lesson:x")
           for T, o in ((2.0, "aaaaaa111111"), (8.0, "bbbbbb222222"))]
    for rid in ids:
        assert eng.wait(rid, timeout=300) == "done"
    at = page(path=INSTRUCTOR)
    assert not at.dataframe                                   # no token: nothing shown
    at.text_input(key="instructor_token_input").set_value("wrong").run()
    assert not at.dataframe and at.error
    at = page({"tok": TOKEN}, path=INSTRUCTOR)
    assert "tok" not in at.query_params                       # the token leaves the URL
    df = at.dataframe[1].value
    assert set(ids) <= set(df["run"])
    assert {"session aaaaaa", "session bbbbbb"} <= set(df["student (session)"])   # side by side
    students = at.dataframe[0].value
    assert set(students["student"]) == {"session aaaaaa", "session bbbbbb"}
    assert "method.params.T" in df.columns                    # the knob that differs is a column
    fig = at.get("plotly_chart")[0]
    import json
    names = [t["name"] for t in json.loads(fig.proto.spec)["data"]]
    assert sum(any(r[-6:] in n for n in names) for r in ids) == 2
    assert all("T=" in n and "noise" not in n for n in names)   # only the knob that differs


def test_students_without_the_token_see_no_link_builder():
    at = page({"lesson": "why-temperature"})
    assert not at.code and not any("link for the class" in e.label for e in at.expander)


def test_soft_targets_page_shows_per_label_probabilities_of_a_text_run(runs_dir):
    """A short DistilBERT text run, then the Soft targets page on it: per-label bars, KL table,
    attention maps of both models (the page switches to the text view for text runs)."""
    import json
    from kdengine.cli import load_config
    eng = engine()
    cfg = load_config("text-distilbert", ["data.n_samples=400", "teacher.epochs=2",
                                          "train.epochs=1", "train.baseline=false"])
    rid = eng.submit(cfg, owner="someone")
    assert eng.wait(rid, timeout=300) == "done", eng.snapshot(rid).error
    at = app_test("app_pages/soft_targets.py", state={"st_run": rid})
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = next(f for f in figs if f["layout"]["title"]["text"].startswith("per-label"))
    assert {t["name"] for t in bars["data"]} == {"teacher", "student"}
    assert len(bars["data"][0]["x"]) == 6
    assert any(t.get("type") == "heatmap" for f in figs for t in f["data"])
    df = at.dataframe[0].value
    assert list(df["label"]) == ["sports", "politics", "tech", "food", "positive", "negative"]
    assert (df["KL"] >= 0).all()
    at.radio(key="st_text_who").set_value("teacher").run()
    at.number_input(key="st_text_layer").set_value(2).run()
    at.radio(key="st_text_who").set_value("student").run()     # 1 layer: the layer is clamped
    assert not at.exception and at.number_input(key="st_text_layer").value == 1
