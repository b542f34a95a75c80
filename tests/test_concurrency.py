"""Four users start runs at once on one shared engine.

Each sees only its own runs, all four finish with their own metrics, and the engine never trains
more runs at a time than its worker limit: the rest wait in the queue. Checked on the Engine API
(four owners, four threads) and through the web app (four AppTest sessions of the Lab).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import kdengine.run.units as units_mod
from kdengine import Engine, RunConfig, Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
WIDTHS = {"ann": 8, "bob": 12, "cat": 16, "dan": 20}     # a different student for each user


def user_cfg(width: int, seed: int) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 32}, "epochs": 1},
        "student": {"arch": "mlp", "depth": 1, "width": width},
        "method": {"name": "hinton"},
        "train": {"epochs": 2, "seed": seed, "log_every": 5}})


@pytest.fixture
def gauge(monkeypatch):
    """Counts trainers running at the same moment (the engine's real unit of work). Trainers wait
    at the start until ``stats["go"]`` is set, so the test sees the queue while all four are in."""
    stats = {"now": 0, "max": 0, "go": threading.Event()}
    lock = threading.Lock()

    class CountingTrainer(units_mod.Trainer):
        def run(self):
            with lock:
                stats["now"] += 1
                stats["max"] = max(stats["max"], stats["now"])
            try:
                stats["go"].wait(timeout=60)
                return super().run()
            finally:
                with lock:
                    stats["now"] -= 1
    monkeypatch.setattr(units_mod, "Trainer", CountingTrainer)
    return stats


def test_four_owners_at_once_each_see_only_their_own_runs(runs_dir, gauge):
    eng = Engine(store=Store(runs_dir), max_workers=2)
    ids: dict[str, str] = {}
    start = threading.Barrier(len(WIDTHS))

    def user(owner: str, seed: int):
        start.wait()
        ids[owner] = eng.submit(user_cfg(WIDTHS[owner], seed), owner=owner, name=owner)
    try:
        threads = [threading.Thread(target=user, args=(o, i)) for i, o in enumerate(WIDTHS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _wait_running(gauge, eng.max_workers)
        assert len(eng.queued()) == len(WIDTHS) - eng.max_workers     # the rest wait their turn
        gauge["go"].set()
        for owner, rid in ids.items():
            assert eng.wait(rid, timeout=120) == "done", eng.snapshot(rid).error
        assert gauge["max"] == eng.max_workers                        # the limit, and it was used
        for i, (owner, rid) in enumerate(ids.items()):
            mine = eng.runs(owner)
            assert [r.run_id for r in mine] == [rid]               # only their own run
            assert [r["id"] for r in eng.store.list_runs(owner=owner)] == [rid]
            snap = eng.snapshot(rid)
            assert snap.config["student"]["width"] == WIDTHS[owner]
            assert snap.summary["student_label"] == f"MLP 1x{WIDTHS[owner]}"
            assert len(snap.series["test_acc"]) == 2               # both epochs, no more
            stored = {m["name"] for m in eng.store.metrics(rid)}
            assert {"test_acc", "loss/kd", "loss/total"} <= stored
    finally:
        eng.shutdown()


def _wait_running(gauge: dict, n: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while gauge["now"] < n and time.monotonic() < end:
        time.sleep(0.01)
    assert gauge["now"] == n


# ---- the same through the web app -------------------------------------------------------------
def test_four_lab_sessions_at_once(runs_dir, gauge, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("KD_MAX_WORKERS", "2")          # the engine is built for this data folder
    sessions = []
    for i, owner in enumerate(WIDTHS):
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        at.number_input(key="lab.student.width").set_value(WIDTHS[owner])
        at.number_input(key="lab.teacher.model.width").set_value(32)
        at.number_input(key="lab.teacher.epochs").set_value(1)
        at.number_input(key="lab.train.epochs").set_value(2).run()
        sessions.append(at)
    for at in sessions:                                 # four Train clicks, back to back
        at.button(key="lab_train").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
    rids = [at.session_state["lab_run"] for at in sessions]
    assert len(set(rids)) == 4
    from ui.engine import _engine_for
    from kdengine.core.paths import data_root
    eng = _engine_for(str(data_root()))
    assert eng.max_workers == 2
    _wait_running(gauge, 2)
    assert sorted(eng.queued()) == sorted(rids[2:])                  # queued in click order
    queued_page = sessions[3]
    queued_page.run()
    assert any("Queued" in p.proto.text for p in queued_page.get("progress")), "no queue shown"
    gauge["go"].set()
    for rid in rids:
        assert eng.wait(rid, timeout=180) == "done", eng.snapshot(rid).error
    assert gauge["max"] == 2
    owners = [at.session_state["kd_owner"] for at in sessions]
    assert len(set(owners)) == 4
    for at, rid, width in zip(sessions, rids, WIDTHS.values()):
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        page = " ".join(m.value for m in at.markdown)
        assert f"`{rid}`" in page and "**done**" in page
        assert not any(f"`{other}`" in page for other in rids if other != rid)
        mine = eng.runs(at.session_state["kd_owner"])
        assert [r.run_id for r in mine] == [rid]
        assert mine[0].config["student"]["width"] == width
        assert len(eng.snapshot(rid).series["test_acc"]) == 2      # its own two epochs


def test_method_registry_first_use_from_many_threads():
    """The first validation in a fresh server can come from several sessions at once: every thread
    must see the whole method registry, not the half-imported one."""
    import sys

    import kdengine.methods as pkg
    import kdengine.core.registry as base
    saved_reg = dict(base._REGISTRY)
    saved_mods = {k: v for k, v in sys.modules.items()
                  if k.startswith("kdengine.methods.") and k != "kdengine.methods.base"}
    saved_attrs = {k.rsplit(".", 1)[1]: getattr(pkg, k.rsplit(".", 1)[1], None) for k in saved_mods}
    base._REGISTRY.clear()
    base._loaded = False
    for k in saved_mods:
        del sys.modules[k]
    results: list = []
    start = threading.Barrier(8)

    def first_use():
        start.wait()
        try:
            results.append(sorted(base.method_names()))
        except Exception as e:  # noqa: BLE001 - recorded, then asserted on
            results.append(e)
    try:
        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:                  # put the original classes back: other tests hold references to them
        base._REGISTRY.clear()
        base._REGISTRY.update(saved_reg)
        sys.modules.update(saved_mods)
        for name, mod in saved_attrs.items():
            if mod is not None:
                setattr(pkg, name, mod)
        base._loaded = True
    assert all(r == sorted(saved_reg) for r in results), results


def test_two_runs_caching_the_same_teacher_at_once(tmp_path):
    """Two runs that need the same uncached teacher train and save it at the same moment; both
    saves must succeed and leave one whole checkpoint (a shared temp file made one fail)."""
    import torch

    from kdengine.core.checkpoints import safe_load, save_checkpoint
    path = tmp_path / "teachers" / "same.pt"
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def saver(i: int):
        start.wait()
        for _ in range(10):
            try:
                save_checkpoint(path, {"state_dict": {"w": torch.full((256, 256), float(i))}})
            except Exception as e:  # noqa: BLE001 - collected, then asserted on
                errors.append(e)
    threads = [threading.Thread(target=saver, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    w = safe_load(path)["state_dict"]["w"]
    assert bool((w == w[0, 0]).all())                   # one writer's whole tensor, not a mix
    assert list(path.parent.iterdir()) == [path]        # no temporary files left behind
