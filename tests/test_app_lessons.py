"""AppTest of the Lessons and Instructor pages: every lesson renders, the class lock holds for
students, answers wait for the instructor, the class board draws each lesson's runs."""
from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import AppTestError

from kdengine.teaching import lessons as lessons_mod
from kdengine.teaching.lessons import load_lessons

from support import app_test

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
def test_every_lesson_renders_with_text_knobs_and_an_answer_the_instructor_reveals(lesson):
    at = page({"lesson": lesson.id})
    assert at.selectbox(key="lessons_pick").value == lesson.id
    shown = " ".join(m.value for m in at.markdown)
    assert lesson.body[:40] in shown and lesson.question[:40] in shown
    assert any(b.key == "lessons_start" for b in at.button) == (not lesson.missing())
    knob_keys = {w.key for w in [*at.number_input, *at.toggle, *at.selectbox]}
    assert {f"lessons.{lesson.id}.{k}" for k in lesson.knobs} <= knob_keys
    assert not at.success and not any(b.key == "lessons_show" for b in at.button)
    assert any("reveals the answer" in c.value for c in at.caption)   # a student waits for it
    teacher = page({"lesson": lesson.id, "tok": TOKEN})
    assert lesson.answer[:40] not in " ".join(c.value for c in at.caption)
    if not lesson.missing():                          # the instructor reveals it to the class
        teacher.button(key="lessons_reveal").click().run()
        at.run()
        at.button(key="lessons_show").click().run()
        assert not at.exception and lesson.answer[:40] in at.success[0].value
        teacher.button(key="lessons_reveal").click().run()        # and may hide it again
        assert not any(b.key == "lessons_show" for b in page({"lesson": lesson.id}).button)


def test_a_locked_link_cannot_be_changed_and_its_value_is_what_runs(runs_dir):
    teacher = page({"lesson": "why-temperature", "lock": "method.params.T,train.epochs",
                    "method.params.T": "7", "train.epochs": "1", "teacher.epochs": "3",
                    "tok": TOKEN})                            # the instructor opens the link
    assert any("teacher epochs" in w.value for w in teacher.warning)   # not a knob: refused
    # the instructor's link generator reproduces the lock
    code = teacher.code[0].value
    assert "lesson=why-temperature" in code and "lock=method.params.T,train.epochs" in code
    assert "method.params.T=7.0" in code
    at = page()                                               # a student, without any link
    key = "lessons.why-temperature.method.params.T"
    w = at.number_input(key=key)
    assert w.value == 7.0 and w.disabled
    assert at.selectbox(key="lessons_pick").disabled          # the lesson itself is fixed too
    with pytest.raises(AppTestError):                         # no browser user can change it...
        w.set_value(9.0)
    at.session_state[key] = 9.0                               # ...and forged state is overwritten
    at.run()
    assert at.number_input(key=key).value == 7.0
    at.button(key="lessons_start").click().run()
    assert not at.exception and not at.error
    rid = at.session_state["lessons_run.why-temperature"]
    eng = engine()
    assert eng.wait(rid, timeout=300) == "done", eng.snapshot(rid).error
    snap = eng.snapshot(rid)
    assert snap.config["method"]["params"]["T"] == 7.0 and snap.config["train"]["epochs"] == 1
    assert snap.config["name"] == "lesson:why-temperature" and snap.lesson == "why-temperature"
    at.run()
    assert not at.exception and at.get("plotly_chart")       # the live chart of the run


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


def test_the_instructor_board_draws_each_lessons_class_with_mean_spread_and_csv(runs_dir):
    import json
    from kdengine import Caller, Roster
    from kdengine.teaching.lessons import get_lesson
    eng = engine()
    lesson = get_lesson("why-temperature")
    Roster(runs_dir).register("aaaaaa111111", "Ana")
    ids = [eng.submit(lesson.config({"method.params.T": T}, fast=True), owner=o,
                      caller=Caller(o), lesson=lesson.id)
           for T, o in ((2.0, "aaaaaa111111"), (8.0, "bbbbbb222222"), (8.0, "cccccc333333"))]
    sweep_cell = eng.submit(lesson.config({}, fast=True), owner="bbbbbb222222", parent="sweep-x")
    for rid in ids + [sweep_cell]:
        assert eng.wait(rid, timeout=300) == "done"
    at = page(path=INSTRUCTOR)
    assert not at.dataframe                                   # no token: nothing shown
    at.text_input(key="instructor_token_input").set_value("wrong").run()
    assert not at.dataframe and at.error
    at = page({"tok": TOKEN}, path=INSTRUCTOR)
    assert "tok" not in at.query_params                       # the token leaves the URL
    assert at.selectbox(key="ins_board_lesson").value == "why-temperature"
    assert "(runs of no lesson)" in at.selectbox(key="ins_board_lesson").options   # the sweep
    assert len(at.selectbox(key="ins_board_lesson").options) == 2     # ...folded, not 1 per cell
    done = next(m for m in at.metric if m.label == "done")
    assert done.value == "3"                                  # three students done
    assert any("2 unnamed" in m.value for m in at.markdown)   # counted, not "session 1c051a"
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    dots = next(t for t in fig["data"] if t["name"] == "finished runs")
    assert sorted(dots["x"]) == [2.0, 8.0, 8.0] and {"Ana", "unnamed 1", "unnamed 2"} == set(dots["text"])
    mean = next(t for t in fig["data"] if t["name"].startswith("class mean"))
    assert mean["x"] == [2.0, 8.0]
    assert fig["layout"]["xaxis"]["title"]["text"] == "temperature T"
    table = at.dataframe[0].value                             # per T: runs, mean, sd
    assert list(table["runs"]) == [1, 2] and table["sd"].isna().tolist() == [True, False]
    csv_button = next(b for b in at.get("download_button") if "CSV" in b.proto.label)
    assert not csv_button.proto.disabled                      # the class as a CSV
    students = next(d.value for d in at.dataframe if "code" in d.value.columns)
    assert set(students["student"]) == {"Ana", "unnamed 1", "unnamed 2"}


def test_a_new_class_archives_the_board_and_merging_moves_runs(runs_dir):
    from kdengine import Roster
    from kdengine.teaching.lessons import get_lesson
    eng = engine()
    lesson = get_lesson("why-temperature")
    book = Roster(runs_dir)
    book.register("aaaaaa111111", "Ana")
    a = eng.submit(lesson.config({}, fast=True), owner="aaaaaa111111", lesson=lesson.id)
    b = eng.submit(lesson.config({}, fast=True), owner="dddddd444444", lesson=lesson.id)
    for rid in (a, b):
        assert eng.wait(rid, timeout=300) == "done"
    at = page({"tok": TOKEN}, path=INSTRUCTOR)
    at.selectbox(key="ins_merge_old").set_value("dddddd444444")
    at.selectbox(key="ins_merge_new").set_value("aaaaaa111111").run()
    at.button(key="ins_merge").click().run()
    at.button(key="ins_confirm_merge_yes").click().run()
    assert not at.exception and eng.store.get_run(b)["owner"] == "aaaaaa111111"
    assert book.merged_into("dddddd444444") == "aaaaaa111111"
    at.button(key="ins_new_class").click().run()
    at.button(key="ins_confirm_new_yes").click().run()
    assert not at.exception
    assert any("class 1 is archived" in s.value for s in at.success)
    assert any("No runs in this class yet" in i.value for i in at.info)
    assert eng.store.get_run(a)["archive"] == "class 1" and Roster(runs_dir).names() == {}


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


def test_the_instructor_locks_changes_and_lifts_the_class_lock_live(runs_dir):
    from kdengine import ClassState
    at = page({"tok": TOKEN}, path=INSTRUCTOR)
    assert any("No lesson is locked" in m.value for m in at.markdown)
    at.selectbox(key="ins_lock_lesson").set_value("why-temperature").run()
    at.number_input(key="ins_lock.why-temperature.method.params.T").set_value(3.0)
    at.multiselect(key="ins_lockp.why-temperature.knobs").set_value(["method.params.T"]).run()
    at.button(key="ins_lockp.why-temperature.set").click().run()
    assert ClassState(runs_dir).lock().locked == {"method.params.T": 3.0}
    student = app_test()                                       # a student's Lab, a new session
    assert student.number_input(key="lab.mp.hinton.T.locked").value == 3.0
    at.number_input(key="ins_lock.why-temperature.method.params.T").set_value(5.0).run()
    at.button(key="ins_lockp.why-temperature.set").click().run()       # changed live
    assert ClassState(runs_dir).lock().locked == {"method.params.T": 5.0}
    student.run()
    assert student.number_input(key="lab.mp.hinton.T.locked").value == 5.0
    at.button(key="ins_lockp.why-temperature.lift").click().run()
    assert ClassState(runs_dir).lock() is None
    assert any("No lesson is locked" in m.value for m in at.markdown)
    student.run()
    assert not student.number_input(key="lab.mp.hinton.T").disabled     # free again
