"""The roster (names, recovery codes), the instructor's grouping and legends,
the instructor token, a new tab getting a student's runs back from their code, and the class's
lesson lock (kept by the server) holding on every page that starts runs (Lab, Sweeps, TA gap), in a
new session, against a hand-edited URL, until the instructor lifts it."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdengine import RunSnapshot
from kdengine.core.config import RunConfig
from kdengine.teaching import classroom
from kdengine.teaching.classroom import (Roster, fold_children, legend_labels, short_names,
                                         student_rows)

from support import app_test

ROOT = Path(__file__).resolve().parent.parent


def run(rid: str, owner: str, created: float, acc: float | None = None, parent=None,
        status: str = "done", **overrides) -> RunSnapshot:
    cfg = RunConfig().with_overrides(overrides).to_dict()
    return RunSnapshot(run_id=rid, owner=owner, name=rid, parent=parent, status=status,
                       created=created, config=cfg, progress=1.0,
                       latest={} if acc is None else {"test_acc": acc})


def test_roster_names_codes_and_recovery(tmp_path):
    book = Roster(tmp_path)
    code = book.register("a" * 12, "  Ann\n  Lee ")
    assert book.name_of("a" * 12) == "Ann Lee"                  # cleaned, single-spaced
    assert len(code) == 6 and set(code) <= set(classroom.CODE_ALPHABET)
    assert book.register("a" * 12, "Ann L.") == code            # renaming keeps the code
    other = book.register("b" * 12, "Bob")
    assert other != code
    assert Roster(tmp_path).owner_for_code(f" {code.lower()} ") == "a" * 12   # another tab
    assert book.owner_for_code("ZZZZZZ") is None
    assert book.names() == {"a" * 12: "Ann L.", "b" * 12: "Bob"}
    with pytest.raises(ValueError):
        book.register("c" * 12, " \t ")


def test_children_fold_under_their_sweep_and_the_best_child_stands_for_it():
    runs = [run("r1", "ann", 1.0, 0.8),
            run("s1", "bob", 2.0, 0.7, parent="sweep-1"),
            run("s2", "bob", 3.0, 0.9, parent="sweep-1"),
            run("s3", "bob", 4.0, None, parent="sweep-1", status="running"),
            run("t1", "cat", 5.0, 0.6, parent="tagap-1")]
    groups = fold_children(runs)
    assert [g.key for g in groups] == ["tagap-1", "sweep-1", "r1"]          # newest first
    sweep = groups[1]
    assert sweep.is_parent and len(sweep.runs) == 3 and sweep.head.run_id == "s2"
    assert not groups[2].is_parent and groups[2].head.run_id == "r1"


def test_student_rows_give_latest_run_and_accuracy_with_names():
    runs = [run("r1", "ann", 1.0, 0.8), run("r2", "ann", 2.0, 0.6),
            run("s1", "bob", 3.0, 0.7, parent="sweep-1"),
            run("s2", "bob", 4.0, None, parent="sweep-1", status="running")]
    rows = student_rows(runs, {"ann": "Ann"})
    assert [r.student for r in rows] == ["Ann", "unnamed 1"]
    ann, bob = rows
    assert (ann.runs, ann.latest.run_id, ann.latest_acc, ann.best_acc) == (2, "r2", 0.6, 0.8)
    assert (bob.runs, bob.active, bob.latest.run_id, bob.best_acc) == (1, 1, "s2", 0.7)


def test_legends_name_only_the_knobs_that_differ():
    runs = [run("a", "x", 1, **{"method.params.T": 2.0}),
            run("b", "x", 2, **{"method.params.T": 8.0, "train.epochs": 5})]
    labels = legend_labels(runs)
    assert labels == {"a": "T=2, epochs=20", "b": "T=8, epochs=5"}
    assert legend_labels([runs[0], run("c", "y", 3, **{"method.params.T": 2.0})]) == \
        {"a": "", "c": ""}                                          # all alike: nothing to name
    assert short_names(["teacher.epochs", "train.epochs", "method.params.T"]) == {
        "teacher.epochs": "teacher.epochs", "train.epochs": "train.epochs",
        "method.params.T": "T"}


def test_instructor_token_from_env_or_generated_once(monkeypatch, runs_dir):
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", "s3cret")
    assert classroom.token_matches("s3cret") and not classroom.token_matches("guess")
    assert not classroom.token_matches(None) and not classroom.token_matches("")
    monkeypatch.delenv("KD_INSTRUCTOR_TOKEN")
    said: list[str] = []
    tok = classroom.instructor_token(said.append)
    assert classroom.instructor_token(said.append) == tok and len(said) == 1 and tok in said[0]


def test_a_new_tab_gets_the_students_runs_back_from_the_code(runs_dir, tiny_cfg):
    from streamlit.testing.v1 import AppTest
    first = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    first.run()
    first.text_input(key="kd_name_input").set_value("Ann").run()
    assert not first.exception, first.exception
    owner = first.session_state["kd_owner"]
    assert first.query_params["student"] == ["Ann"] or first.query_params["student"] == "Ann"
    from ui.engine import get_engine
    rid = get_engine().submit(tiny_cfg, owner=owner, name="ann's run")
    code = Roster(get_engine().store.root).code_of(owner)
    assert code and any(code in c.value for c in first.sidebar.caption)

    tab = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)     # no ?sid
    tab.run()
    assert tab.session_state["kd_owner"] != owner
    tab.text_input(key="kd_code_input").set_value(code.lower()).run()
    assert not tab.exception, tab.exception
    assert tab.session_state["kd_owner"] == owner
    assert [r.run_id for r in get_engine().runs(tab.session_state["kd_owner"])] == [rid]
    assert any("Ann" in c.value for c in tab.sidebar.caption)
    get_engine().stop(rid)


def test_a_second_ana_is_asked_for_her_code_not_made_a_second_identity(runs_dir):
    from streamlit.testing.v1 import AppTest
    first = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    first.run()
    first.text_input(key="kd_name_input").set_value("Ana").run()
    owner = first.session_state["kd_owner"]
    tab = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)    # a new tab, no ?sid
    tab.run()
    tab.text_input(key="kd_name_input").set_value(" ana ").run()
    assert not tab.exception
    assert any("already a student's name" in w.value and "code" in w.value for w in tab.warning)
    book = Roster(runs_dir)
    assert list(book.names().values()) == ["Ana"]                 # still one Ana
    tab.text_input(key="kd_code_input").set_value(book.code_of(owner)).run()
    assert tab.session_state["kd_owner"] == owner                 # the code: the same Ana


# ---- lesson locks beyond the Lessons page --------------------------------------------------------
def test_locks_are_applied_to_any_config_and_named_next_to_the_text():
    from kdengine.teaching.lessons import apply_locks, get_lesson, locked_note, parse_link
    link = parse_link({"lesson": "why-temperature", "lock": "method.params.T",
                       "method.params.T": "8"})
    cfg = RunConfig().with_overrides({"method.params.T": 3.0, "train.epochs": 7})
    fixed, changed = apply_locks(cfg, link.locked)
    assert changed == ["method.params.T"] and fixed.to_dict()["method"]["params"]["T"] == 8.0
    assert fixed.train.epochs == 7                                  # unlocked knobs untouched
    assert apply_locks(fixed, link.locked) == (fixed, [])
    note = locked_note(get_lesson("why-temperature"), link.locked)
    assert "**T = 8.0**" in note and "the text below uses T = 4.0" in note


def lock_class(root, locked: dict, lesson: str = "why-temperature") -> None:
    """The instructor opens ``lesson`` for the class with ``locked`` (as the Instructor page does)."""
    from kdengine import Caller, ClassLock, ClassState
    ClassState(root).set_lock(ClassLock(lesson, locked), Caller("teacher", instructor=True))


def test_the_lab_draws_a_locked_knob_disabled_at_its_value_and_trains_with_it(runs_dir):
    from streamlit.testing.v1 import AppTest
    lock_class(runs_dir, {"method.params.T": 8.0})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    t = at.number_input(key="lab.mp.hinton.T.locked")
    assert t.disabled and t.value == 8.0 and "Fixed by your instructor" in t.help
    assert not at.number_input(key="lab.train.epochs").disabled       # unlocked knobs stay free
    method = at.selectbox(key="lab.method.name")        # another method would escape the lock
    assert method.disabled and method.value == "hinton" and "its own T" in method.help
    at.number_input(key="lab.teacher.epochs").set_value(1)
    at.number_input(key="lab.train.epochs").set_value(1).run()
    at.button(key="lab_train").click().run()
    assert not at.exception, at.exception
    from ui.engine import get_engine
    rid = at.session_state["lab_run"]
    assert get_engine().snapshot(rid).config["method"]["params"]["T"] == 8.0
    get_engine().stop(rid)


LOCK_T8 = {"lesson": "why-temperature", "lock": "method.params.T,train.epochs",
           "method.params.T": "8", "train.epochs": "1"}
T8 = {"method.params.T": 8.0, "train.epochs": 1}


def test_a_locked_knob_and_the_method_it_belongs_to_are_not_free_to_vary():
    from kdengine import free_knobs
    free, why = free_knobs(["method.name", "method.params.T", "method.params.soft_weight", "train.lr"],
                           {"method.params.T": 8.0})
    assert free == ["method.params.soft_weight", "train.lr"]
    assert why == {"method.params.T": "locked at 8.0",
                   "method.name": "another method would start from its own T"}
    assert free_knobs(["method.name", "train.lr"], {"train.lr": 0.1})[0] == ["method.name"]


def test_an_instructor_link_locks_the_class_and_a_student_link_locks_nothing(runs_dir,
                                                                            monkeypatch):
    from kdengine import ClassState
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", "tok-1")
    student = app_test(query=LOCK_T8)                  # a student's copy of the link: no lock
    assert ClassState(runs_dir).lock() is None and not student.number_input(
        key="lab.mp.hinton.T").disabled
    assert any("only your instructor can fix" in w.value for w in student.warning)
    at = app_test(query={**LOCK_T8, "tok": "tok-1"})   # the instructor opens it: the class is locked
    assert ClassState(runs_dir).lock().locked == T8
    assert any("temperature T = 8.0, epochs = 1" in i.value for i in at.info)
    other = app_test()                                 # any student, any tab, no link at all
    assert any("temperature T = 8.0, epochs = 1" in i.value for i in other.info)
    assert other.number_input(key="lab.mp.hinton.T.locked").value == 8.0


def test_the_lock_survives_a_new_session_and_a_hand_edited_url_until_lifted(runs_dir):
    from kdengine import Caller, ClassState
    lock_class(runs_dir, {"method.params.T": 2.0})
    at = app_test(query={"method.params.T": "9.0"})     # F5 / a new tab / an edited URL
    t = at.number_input(key="lab.mp.hinton.T.locked")
    assert t.disabled and t.value == 2.0
    refused = " ".join(w.value for w in at.warning)
    assert "temperature T: your instructor has fixed it at 2.0; the link's 9.0 is not used" in refused
    sweeps = app_test("app_pages/sweeps.py")             # another page: T is no sweep axis
    assert "temperature T" not in sweeps.selectbox(key="sw_x").options     # options by label
    ClassState(runs_dir).set_lock(None, Caller("teacher", instructor=True))
    free = app_test(query={"method.params.T": "9.0"})
    t = free.number_input(key="lab.mp.hinton.T")
    assert not t.disabled and t.value == 9.0 and not free.warning
    assert "temperature T" in app_test("app_pages/sweeps.py").selectbox(key="sw_x").options


def test_the_sweeps_page_refuses_a_locked_axis_and_its_cells_carry_the_lock(runs_dir):
    from kdengine import get_sweep
    from ui.engine import get_engine
    lock_class(runs_dir, T8)
    at = app_test("app_pages/sweeps.py")
    at.selectbox(key="sw_preset").set_value("digits-quick").run()
    for key in ("sw_x", "sw_y"):
        options = at.selectbox(key=key).options                   # by label
        assert not {"temperature T", "method"} & set(options) and "soft weight" in options
    note = next(i.value for i in at.info if "instructor has fixed" in i.value)
    assert "temperature T = 8.0" in note and "temperature T (locked at 8.0)" in note
    assert at.number_input(key="sw_epochs.locked").disabled
    at.radio(key="sw_mode").set_value("search").run()              # nor can a search range over it
    knobs = at.multiselect(key="se_knobs").options                   # by label
    assert "temperature T" not in knobs and "soft weight" in knobs
    at.radio(key="sw_mode").set_value("grid").run()
    at.selectbox(key="sw_x").set_value("method.params.soft_weight").run()
    at.text_input(key="sw_xv_method.params.soft_weight").set_value("0.5, 0.9")
    at.selectbox(key="sw_y").set_value("method.params.soft_weight")
    at.radio(key="sw_backend").set_value("vectorised")
    at.button(key="sw_launch").click().run()
    assert not at.error, [e.value for e in at.error]
    sweep = get_sweep(at.session_state["sweep_id"])
    assert sweep.wait(timeout=300) == "done", sweep.error
    cells = [get_engine().store.get_run(r["run_id"])["config"] for r in sweep.rows()]
    assert len(cells) == 2
    assert all(c["method"]["params"]["T"] == 8.0 and c["train"]["epochs"] == 1 for c in cells)


def test_the_ta_gap_runs_carry_the_lock(runs_dir):
    from kdengine import get_experiment
    from ui.engine import get_engine
    lock_class(runs_dir, T8)
    at = app_test("app_pages/ta_gap.py")
    assert any("temperature T = 8.0" in i.value for i in at.info)
    at.multiselect(key="ta_sizes_mlp").set_value(["MLP 1x8", "MLP 1x16", "MLP 1x32"]).run()
    at.number_input(key="ta_seeds").set_value(1)
    at.selectbox(key="ta_choice").set_value(1)                      # a fixed TA: no rule to wait for
    at.button(key="ta_launch").click().run()
    assert not at.error, [e.value for e in at.error]
    exp = get_experiment(at.session_state["ta_exp"])
    assert exp.wait(timeout=300) == "done", exp.error
    runs = [get_engine().store.get_run(r["run_id"])["config"] for r in exp.records]
    kd = [c for c in runs if c["method"]["name"] != "ce"]
    assert kd and all(c["method"]["params"]["T"] == 8.0 for c in kd)
    assert all(c["train"]["epochs"] == 1 for c in runs)
