"""The engine end to end: submit -> done, store contents, determinism, pause/resume/stop, faults."""
from __future__ import annotations

import threading

import pytest
import torch

from kdengine.core.events import Ended, Metrics, Phase
from kdengine.cli import load_config
from kdengine import Engine, Store
from kdengine.run.trainer import Trainer


def test_digits_preset_trains_end_to_end_and_is_stored(engine):
    cfg = load_config("digits-50-labels", ["train.epochs=3", "teacher.epochs=5"])
    rid = engine.submit(cfg, owner="alice")
    assert engine.wait(rid, timeout=300) == "done", engine.snapshot(rid).error
    snap = engine.snapshot(rid)
    assert snap.progress == 1.0 and snap.summary["final_test_acc"] > 0.3
    assert {"loss/kd", "loss/ce", "loss/total", "test_acc", "train_acc", "agreement", "kl_test",
            "lr", "samples_per_s", "eta_s", "teacher_test_acc", "baseline_test_acc"} <= set(snap.series)
    assert [p[1] for p in snap.series["test_acc"]] == [1.0, 2.0, 3.0]
    row = engine.store.get_run(rid)
    assert row["status"] == "done" and row["owner"] == "alice"
    assert row["versions"]["torch"] == torch.__version__ and row["seed"] == 0
    stored = engine.store.series(rid)
    assert [v for _, _, v in stored["test_acc"]] == [v for _, _, v in snap.series["test_acc"]]
    assert engine.store.checkpoint_path(rid).exists()
    assert any("50 of" in n for n in snap.notices)


def test_same_seed_same_metrics_different_seed_differs(runs_dir, tiny_cfg):
    def losses(cfg):
        out = []
        Trainer(cfg, lambda e: out.append(e.values) if isinstance(e, Metrics) else None).run()
        return [v.get("loss/total") for v in out if "loss/total" in v]
    a, b = losses(tiny_cfg), losses(tiny_cfg)
    c = losses(tiny_cfg.with_overrides({"train.seed": 1}))
    assert a == b and len(a) > 3
    assert a != c


def test_owners_see_only_their_runs(engine, tiny_cfg):
    r1 = engine.submit(tiny_cfg, owner="tab-1")
    r2 = engine.submit(tiny_cfg, owner="tab-2")
    assert [s.run_id for s in engine.runs(owner="tab-1")] == [r1]
    assert [s.run_id for s in engine.runs(owner="tab-2")] == [r2]
    engine.wait(r1, 120), engine.wait(r2, 120)
    assert engine.snapshot(r1).series["test_acc"] != [] and engine.snapshot(r2).owner == "tab-2"


def test_concurrency_limit_queues_the_rest(engine, tiny_cfg):
    slow = tiny_cfg.with_overrides({"train.epochs": 30})
    r1 = engine.submit(slow)
    r2 = engine.submit(tiny_cfg)
    seen = set()
    while engine.status(r1) in ("queued", "running"):
        seen.add((engine.status(r1), engine.status(r2)))
        if ("running", "queued") in seen:
            break
    assert ("running", "queued") in seen and engine.queued() == [r2]
    engine.stop(r1)
    assert engine.wait(r2, 120) == "done"


def test_pause_resume_stop(engine, tiny_cfg):
    cfg = tiny_cfg.with_overrides({"train.epochs": 200})
    rid = engine.submit(cfg)
    first_point = threading.Event()
    engine.subscribe(rid, lambda e: first_point.set() if isinstance(e, Metrics) and "loss/total" in e.values else None)
    assert first_point.wait(120)
    engine.pause(rid)
    assert engine.wait_for(rid, "paused", 30)
    step = engine.snapshot(rid).step
    import time
    time.sleep(0.3)
    assert engine.snapshot(rid).step == step          # no progress while paused
    engine.resume(rid)
    assert engine.wait_for(rid, "running", 30)
    engine.stop(rid)
    assert engine.wait(rid, 60) == "stopped"
    assert engine.store.get_run(rid)["status"] == "stopped"


def test_stopping_a_queued_run(engine, tiny_cfg):
    r1 = engine.submit(tiny_cfg.with_overrides({"train.epochs": 100}))
    r2 = engine.submit(tiny_cfg)
    engine.stop(r2)
    assert engine.status(r2) == "stopped"
    engine.stop(r1)
    assert engine.wait(r1, 60) == "stopped"


def test_failing_run_is_recorded_and_engine_keeps_serving(engine, tiny_cfg, monkeypatch):
    from kdengine.methods import hinton

    def boom(self, batch, step):
        raise RuntimeError("kaboom in loss")
    monkeypatch.setattr(hinton.HintonKD, "loss_terms", boom)
    bad = engine.submit(tiny_cfg)
    assert engine.wait(bad, 120) == "failed"
    assert "kaboom in loss" in engine.snapshot(bad).error
    assert "kaboom in loss" in engine.store.get_run(bad)["error"]
    monkeypatch.undo()
    good = engine.submit(tiny_cfg)
    assert engine.wait(good, 120) == "done"


def test_nan_loss_stops_with_step_and_term(engine, tiny_cfg, monkeypatch):
    cfg = tiny_cfg.with_overrides({"train.lr": 10.0, "train.optimizer": "sgd", "train.momentum": 0.0,
                                   "method.params.T": 1.0, "train.epochs": 20, "train.log_every": 7})
    from kdengine.methods import hinton
    orig = hinton.HintonKD.loss_terms

    def explode(self, batch, step):   # a loss that is finite until step 11, then inf
        terms = orig(self, batch, step)
        if step >= 10:
            terms["kd"] = terms["kd"] * float("inf")
        return terms
    monkeypatch.setattr(hinton.HintonKD, "loss_terms", explode)
    rid = engine.submit(cfg)
    assert engine.wait(rid, 120) == "failed"
    err = engine.snapshot(rid).error
    assert "'kd'" in err and "step 11" in err


def test_huge_learning_rate_becomes_nonfinite_and_fails(engine, tiny_cfg):
    cfg = tiny_cfg.with_overrides({"train.lr": 10.0, "train.optimizer": "sgd", "train.epochs": 30,
                                   "method.params.hard_weight": 1.0})
    rid = engine.submit(cfg)
    st = engine.wait(rid, 120)
    if st == "failed":
        assert "became" in engine.snapshot(rid).error and "step" in engine.snapshot(rid).error
    else:  # SGD may survive; then all recorded losses must be finite
        assert st == "done"


def test_bad_config_is_rejected_at_submit(engine):
    from kdengine import ConfigError
    with pytest.raises(ConfigError) as e:
        engine.submit({"method": {"name": "hinton", "params": {"T": -1}}})
    assert e.value.field == "method.params.T"


def test_interrupted_runs_are_recovered_and_resumed(runs_dir, tiny_cfg):
    store = Store(runs_dir)
    eng = Engine(store=store, max_workers=1)
    rid = eng.submit(tiny_cfg.with_overrides({"train.epochs": 3}))
    assert eng.wait(rid, 120) == "done"
    eng.shutdown()
    # pretend the process died mid-run: status running, owned by a pid that no longer exists
    store._tx("UPDATE runs SET status='running', pid=999999 WHERE id=?", (rid,))
    store2 = Store(runs_dir)
    assert store2.get_run(rid)["status"] == "interrupted"
    eng2 = Engine(store=store2, max_workers=1)
    assert eng2.resume_run(rid) == rid
    assert eng2.wait(rid, 120) == "done"
    assert any("Resumed" in n for n in eng2.snapshot(rid).notices)
    eng2.shutdown()


def test_shipped_teacher_is_used_and_checked(engine, tiny_cfg):
    from kdengine.teachers.sources import shipped_teachers
    assert "digits-mlp-2x256" in shipped_teachers()
    cfg = tiny_cfg.with_overrides({"teacher.source": "shipped", "teacher.checkpoint": "digits-mlp-2x256"})
    rid = engine.submit(cfg)
    assert engine.wait(rid, 120) == "done", engine.snapshot(rid).error
    assert engine.snapshot(rid).summary["teacher_test_acc"] > 0.9
    bad = tiny_cfg.with_overrides({"teacher.source": "shipped", "teacher.checkpoint": "moons-mlp-3x64"})
    rid = engine.submit(bad)
    assert engine.wait(rid, 120) == "failed"
    assert "teacher.checkpoint" in engine.snapshot(rid).error


def test_a_subscriber_given_at_submit_sees_the_runs_first_event(engine, tiny_cfg):
    # subscribe() after submit() may miss the first events of a run that starts at once
    seen = []
    run_id = engine.submit(tiny_cfg, owner="a", subscriber=seen.append)
    assert engine.wait(run_id) == "done"
    phases = [e.phase for e in seen if isinstance(e, Phase)]
    assert phases[0] == "data" and "student" in phases
    assert isinstance(seen[-1], Ended) and seen[-1].status == "done"
    assert seen[-1].summary["final_test_acc"] == engine.snapshot(run_id).summary["final_test_acc"]


def test_a_run_whose_thread_dies_continues_from_its_checkpoint_once(engine, tiny_cfg, monkeypatch):
    """Something other than a run's own fault kills its training thread (here a SystemExit in
    epoch 3): the run continues by itself from its last checkpoint, once, with a notice; the
    second time it fails, saying how to continue it."""
    from kdengine.methods import hinton
    orig = hinton.HintonKD.loss_terms
    kills = {"left": 1}

    def dies_in_epoch_3(self, batch, step):
        if step == 2 * self.ctx.steps_per_epoch + 1 and kills["left"]:
            kills["left"] -= 1
            raise SystemExit("the worker went away")
        return orig(self, batch, step)
    monkeypatch.setattr(hinton.HintonKD, "loss_terms", dies_in_epoch_3)
    cfg = tiny_cfg.with_overrides({"train.epochs": 4})
    rid = engine.submit(cfg)
    assert engine.wait(rid, 120) == "done", engine.snapshot(rid).error
    snap = engine.snapshot(rid)
    assert any("stopped unexpectedly" in n and "epoch 2" in n for n in snap.notices), snap.notices
    assert [p[1] for p in snap.series["test_acc"]] == [1.0, 2.0, 3.0, 4.0]
    assert [p[1] for p in engine.store.series(rid)["test_acc"]] == [1.0, 2.0, 3.0, 4.0]

    kills["left"] = 2                 # dies, continues, dies again: failed, resumable by hand
    rid = engine.submit(cfg.with_overrides({"train.seed": 1}))
    assert engine.wait(rid, 120) == "failed"
    assert "again" in engine.snapshot(rid).error and "Continue" in engine.snapshot(rid).error
    engine.resume_run(rid)
    assert engine.wait(rid, 120) == "done"


def test_a_group_is_one_queue_entry_and_each_member_an_ordinary_run(engine, tiny_cfg):
    from kdengine import ConfigError
    cfgs = [tiny_cfg.with_overrides({"method.params.T": t, "train.epochs": 3}) for t in (1.0, 4.0)]
    blocker = engine.submit(tiny_cfg.with_overrides({"train.epochs": 100}), owner="zed")
    assert engine.wait_for(blocker, "running", 60)
    ids = engine.submit_group(cfgs, owner="ann", names=["T=1", "T=4"], parent="sw-1")
    assert engine.queued() == ids and {engine.queue_info(r)[0] for r in ids} == {0}
    engine.stop(blocker)
    for rid in ids:
        assert engine.wait(rid, 120) == "done", engine.snapshot(rid).error
        snap = engine.snapshot(rid)
        assert snap.summary["stacked"] == 2 and snap.parent == "sw-1" and snap.owner == "ann"
        assert engine.store.checkpoint_path(rid).exists()
    assert [engine.snapshot(r).name for r in ids] == ["T=1", "T=4"]
    with pytest.raises(ConfigError) as e:        # other students: not one stack
        engine.submit_group([cfgs[0], cfgs[1].with_overrides({"student.width": 64})])
    assert e.value.field == "method.params"
    with pytest.raises(ConfigError) as e:        # a method that trains one student at a time
        engine.submit_group([c.with_overrides({"method.name": "sobolev", "method.params": {}})
                             for c in cfgs])
    assert "one student at a time" in str(e.value)
