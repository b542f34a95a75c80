"""A class, not a crowd of sessions, at the engine: a student acts on their own runs only (stop,
pause, resume, continue, delete, prune), the instructor on any; the class's lesson lock is the
server's (it survives a restart) and the engine applies it to a student's run; merging two
identities moves the runs; a new class archives them."""
from __future__ import annotations

import pytest

from kdengine import Caller, ClassLock, ClassState, Engine, NotAllowed, Store

ANA, BEA = Caller("a" * 12), Caller("b" * 12)
TEACHER = Caller("t" * 12, instructor=True)


def finished(store: Store, owner: str, cfg, n: int = 1) -> list[str]:
    """Stored runs that ended (no training needed to delete or prune them)."""
    ids = []
    for _ in range(n):
        rid = store.create_run(cfg.to_dict(), cfg.hash, owner=owner, status="queued")
        store.set_status(rid, "done")
        ids.append(rid)
    return ids


def test_a_student_cannot_delete_or_prune_another_students_runs(engine, tiny_cfg):
    store = engine.store
    ana = finished(store, ANA.owner, tiny_cfg, 2)
    bea = finished(store, BEA.owner, tiny_cfg, 2)
    with pytest.raises(NotAllowed, match="belongs to another student.*Nothing was changed"):
        engine.delete_run(bea[0], caller=ANA)
    assert store.get_run(bea[0]) is not None                    # nothing lost on a refusal
    engine.delete_run(ana[0], caller=ANA)                       # her own
    assert store.get_run(ana[0]) is None
    # a student's prune keeps her own newest N and never touches anyone else's
    assert engine.prune(keep=0, caller=ANA) == 1
    assert {r["id"] for r in store.list_runs()} == set(bea)
    engine.delete_run(bea[0], caller=TEACHER)                   # the instructor may delete any
    assert engine.prune(keep=0, caller=TEACHER) == 1 and store.list_runs() == []


def test_stop_pause_resume_of_another_students_run_are_refused(engine, tiny_cfg):
    rid = engine.submit(tiny_cfg, owner=ANA.owner, caller=ANA)
    for act in (engine.stop, engine.pause, engine.resume, engine.resume_run):
        with pytest.raises(NotAllowed):
            act(rid, caller=BEA)
    assert engine.status(rid) in ("queued", "running")          # still training
    with pytest.raises(ValueError, match="stop it first"):
        engine.delete_run(rid, caller=ANA)                      # a live run is never deleted
    assert engine.prune(keep=0, caller=TEACHER) == 0            # nor pruned
    engine.stop(rid, caller=TEACHER)
    assert engine.wait(rid, timeout=60) == "stopped"
    engine.delete_run(rid, caller=ANA)
    assert engine.store.get_run(rid) is None and rid not in {r.run_id for r in engine.runs()}


def test_a_students_sweep_is_stopped_or_resumed_only_by_her_or_the_instructor(engine, tiny_cfg):
    from kdengine import SweepSpec, resume_sweep, start_sweep
    spec = SweepSpec(base=tiny_cfg.with_overrides({"train.epochs": 100}).to_dict(),
                     axes={"method.params.T": [2.0, 4.0]})
    sw = start_sweep(engine, spec, owner=ANA.owner)
    with pytest.raises(NotAllowed, match="another student"):
        sw.stop(caller=BEA)
    assert not sw.done
    sw.stop(caller=ANA)
    assert sw.wait(120) == "stopped"
    with pytest.raises(NotAllowed, match="another student"):
        resume_sweep(engine, sw.id, caller=BEA)
    again = resume_sweep(engine, sw.id, caller=TEACHER)
    again.stop(caller=TEACHER)
    assert again.wait(120) == "stopped"


def test_the_class_lock_is_the_servers_and_the_engine_applies_it_to_students(runs_dir, tiny_cfg):
    state = ClassState(runs_dir)
    with pytest.raises(NotAllowed, match="Only the instructor"):
        state.set_lock(ClassLock("why-temperature", {"method.params.T": 2.0}), caller=ANA)
    state.set_lock(ClassLock("why-temperature", {"method.params.T": 2.0}), caller=TEACHER)
    eng = Engine(store=Store(runs_dir), max_workers=1)          # a restarted server reads it back
    try:
        assert eng.classroom.lock().locked == {"method.params.T": 2.0}
        rid = eng.submit(tiny_cfg, owner=ANA.owner, caller=ANA)          # T = 4 asked
        snap = eng.snapshot(rid)
        assert snap.config["method"]["params"]["T"] == 2.0 and snap.lesson == "why-temperature"
        assert any("fixed T = 2.0" in n for n in snap.notices)
        free = eng.submit(tiny_cfg, owner=TEACHER.owner, caller=TEACHER)   # not bound by it
        assert eng.snapshot(free).config["method"]["params"]["T"] == 4.0
        assert eng.snapshot(free).lesson is None                  # and not on the lesson's board
        plain = eng.submit(tiny_cfg, owner="cli")                  # this machine's own code
        assert eng.snapshot(plain).config["method"]["params"]["T"] == 4.0
        assert eng.store.get_run(rid)["lesson"] == "why-temperature"
        state.set_lock(None, caller=TEACHER)                      # lifted: the knob is free
        again = eng.submit(tiny_cfg, owner=ANA.owner, caller=ANA)
        assert eng.snapshot(again).config["method"]["params"]["T"] == 4.0
        for r in (rid, free, plain, again):
            eng.stop(r)
    finally:
        eng.shutdown()


def test_merging_two_identities_moves_their_runs(engine, tiny_cfg):
    from kdengine import Roster, merge_students
    book = Roster(engine.store.root)
    book.register(ANA.owner, "Ana")
    old = finished(engine.store, "c" * 12, tiny_cfg, 2)
    with pytest.raises(NotAllowed):
        merge_students(engine, book, "c" * 12, ANA.owner, caller=BEA)
    assert merge_students(engine, book, "c" * 12, ANA.owner, caller=TEACHER) == 2
    assert {r["owner"] for r in engine.store.list_runs()} == {ANA.owner}
    assert {r.run_id for r in engine.list_runs(owner=ANA.owner)} == set(old)
    assert book.merged_into("c" * 12) == ANA.owner and book.name_of(ANA.owner) == "Ana"


def test_a_new_class_archives_the_runs_and_starts_empty(engine, tiny_cfg):
    state = engine.classroom
    state.set_lock(ClassLock("why-temperature", {"method.params.T": 2.0}))
    state.reveal("why-temperature")
    ids = finished(engine.store, ANA.owner, tiny_cfg, 2)
    with pytest.raises(NotAllowed):
        engine.new_class(caller=ANA)
    assert engine.new_class(caller=TEACHER) == "class 1"
    assert engine.list_runs(archived=False) == []                 # off the board...
    kept = engine.list_runs(archived=True)                         # ...still stored, tagged
    assert {r.run_id for r in kept} == set(ids) and {r.archive for r in kept} == {"class 1"}
    assert state.lock() is None and state.revealed() == set() and state.label() == "class 2"
    new = finished(engine.store, ANA.owner, tiny_cfg)
    assert [r.run_id for r in engine.list_runs(archived=False)] == new


def test_a_store_made_before_the_class_columns_gets_them(tmp_path):
    import sqlite3
    db = tmp_path / "runs.sqlite"
    with sqlite3.connect(db) as c:                  # the runs table as it was before
        c.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', owner TEXT "
                  "NOT NULL DEFAULT '', status TEXT NOT NULL, config_json TEXT NOT NULL, config_hash "
                  "TEXT NOT NULL, method TEXT NOT NULL DEFAULT '', seed INTEGER NOT NULL DEFAULT 0, "
                  "versions_json TEXT NOT NULL DEFAULT '{}', summary_json TEXT NOT NULL DEFAULT '{}', "
                  "error TEXT, pid INTEGER, created REAL NOT NULL, started REAL, finished REAL, "
                  "updated REAL NOT NULL, parent TEXT)")
        c.execute("INSERT INTO runs (id, status, config_json, config_hash, created, updated) "
                  "VALUES ('old', 'done', '{}', 'h', 1, 1)")
    store = Store(tmp_path)
    assert store.get_run("old")["lesson"] is None and store.get_run("old")["archive"] is None
    rid = store.create_run({}, "h2", lesson="few-labels")
    assert store.get_run(rid)["lesson"] == "few-labels"


def test_pages_say_who_asks_whenever_they_start_change_or_remove_a_run():
    """A page's engine call without ``caller=`` would act as this machine's own code (allowed
    everything, no class lock): every such call in app_pages/ and ui/ names the caller."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    verbs = {"submit", "stop", "pause", "resume", "resume_run", "delete_run", "prune", "move_runs",
             "new_class"}
    missing = []
    for f in [*root.glob("app_pages/*.py"), *root.glob("ui/*.py")]:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in verbs):
                continue
            recv = node.func.value
            is_engine = (isinstance(recv, ast.Name) and recv.id == "engine") or (
                isinstance(recv, ast.Call) and getattr(recv.func, "id", "") == "get_engine")
            if is_engine and not any(k.arg == "caller" for k in node.keywords):
                missing.append(f"{f.relative_to(root)}:{node.lineno} engine.{node.func.attr}")
    assert not missing, missing


def test_the_command_line_runs_the_class_as_the_instructor(runs_dir, tiny_cfg, capsys):
    from kdengine.cli import main
    assert main(["class", "lock", "why-temperature", "method.params.T=2"]) == 0
    assert ClassState(runs_dir).lock().locked == {"method.params.T": 2.0}
    assert "lock: why-temperature method.params.T=2.0" in capsys.readouterr().out
    assert main(["class", "lock", "why-temperature", "method.params.T=-1"]) == 2   # refused
    assert "method.params.T" in capsys.readouterr().err
    assert ClassState(runs_dir).lock().locked == {"method.params.T": 2.0}      # nothing lost
    assert main(["class", "reveal", "why-temperature"]) == 0
    assert ClassState(runs_dir).revealed() == {"why-temperature"}
    store = Store(runs_dir)
    rid = finished(store, ANA.owner, tiny_cfg)[0]
    capsys.readouterr()
    assert main(["class", "csv"]) == 0 and rid in capsys.readouterr().out
    assert main(["class", "new"]) == 0 and "class 1 archived" in capsys.readouterr().out
    assert ClassState(runs_dir).lock() is None and store.get_run(rid)["archive"] == "class 1"
    assert main(["class", "unlock"]) == 0
