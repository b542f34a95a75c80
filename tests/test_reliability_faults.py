"""Numerical faults, bad teacher checkpoints, and faults inside a worker.

Each fault is injected on purpose; the run that meets it ends ``failed`` with a message a user can
act on, and the engine goes on serving the other runs and new ones.
"""
from __future__ import annotations

import threading

import pytest
import torch

from kdengine import ConfigError, RunConfig
from kdengine.core.config import ModelConfig
from kdengine.data.datasets import load_data
from kdengine.methods.hinton import HintonKD
from kdengine.models.families import build_model
from kdengine.core.checkpoints import CheckpointError, safe_load, save_checkpoint
from kdengine.teachers.sources import get_teacher

TEACHER = {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 32}, "epochs": 2}


def cfg(name="", **train) -> RunConfig:
    return RunConfig.from_dict({
        "name": name, "data": {"name": "digits"}, "teacher": TEACHER,
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": "hinton"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "log_every": 5, **train}})


# ---- numerical faults ---------------------------------------------------------------------------
def test_exploding_loss_stops_the_run_naming_step_and_term(engine):
    """Logit regression x100 at lr 10 with SGD diverges to inf within a few steps."""
    bad = cfg(**{"optimizer": "sgd", "lr": 10.0}).with_overrides(
        {"method.name": "logit_mse", "method.params": {"mse_weight": 100.0}})
    rid = engine.submit(bad, owner="t")
    assert engine.wait(rid, timeout=60) == "failed"
    snap = engine.snapshot(rid)
    err = snap.error
    assert "'mse'" in err and "step" in err and ("inf" in err or "nan" in err), err
    assert "learning rate" in err                   # what to do about it
    row = engine.store.get_run(rid)
    assert row["status"] == "failed" and row["error"] == err
    # No non-finite value reached the charts or the store.
    for name, pts in snap.series.items():
        if name.startswith("loss/"):
            assert all(torch.isfinite(torch.tensor(v)) for _, _, v in pts), name


def test_nan_at_a_known_step_is_reported_at_that_step(engine, monkeypatch):
    """The NaN check runs once per logging window, yet names the exact step."""
    orig = HintonKD.loss_terms

    def poisoned(self, batch, step):
        terms = orig(self, batch, step)
        if self.ctx.config.name == "nan7" and step == 6:    # the 7th step
            terms["kd"] = terms["kd"] * float("nan")
        return terms
    monkeypatch.setattr(HintonKD, "loss_terms", poisoned)
    rid = engine.submit(cfg("nan7", log_every=5), owner="t")
    assert engine.wait(rid, timeout=60) == "failed"
    err = engine.snapshot(rid).error
    assert "'kd'" in err and "nan" in err and "step 7 " in err, err


# ---- bad teacher checkpoints --------------------------------------------------------------------
def checkpoint_cfg(path: str) -> RunConfig:
    return cfg().with_overrides({"teacher.source": "checkpoint", "teacher.checkpoint": path})


def test_corrupt_truncated_and_missing_checkpoints_give_checkpoint_errors(runs_dir):
    data = load_data(cfg().data)
    good = build_model(cfg().teacher.model, data.input_shape, data.n_classes)
    save_checkpoint(runs_dir / "good.pt", {"state_dict": good.state_dict()})
    blob = (runs_dir / "good.pt").read_bytes()
    (runs_dir / "junk.pt").write_bytes(b"\x00garbage\xff" * 100)
    (runs_dir / "half.pt").write_bytes(blob[: len(blob) // 2])
    (runs_dir / "empty.pt").write_bytes(b"")
    for name, words in [("junk.pt", "could not be loaded"), ("half.pt", "could not be loaded"),
                        ("empty.pt", "could not be loaded"), ("missing.pt", "does not exist")]:
        with pytest.raises(CheckpointError, match=words):
            get_teacher(checkpoint_cfg(name), data, torch.device("cpu"))
    model, info = get_teacher(checkpoint_cfg("good.pt"), data, torch.device("cpu"))
    assert info["source"] == "checkpoint" and not model.training


def test_wrong_architecture_checkpoint_is_refused_clearly(runs_dir):
    data = load_data(cfg().data)
    other = build_model(ModelConfig(arch="mlp", depth=2, width=8),
                        data.input_shape, data.n_classes)
    save_checkpoint(runs_dir / "small.pt", {"state_dict": other.state_dict()})
    with pytest.raises(CheckpointError, match="does not fit the chosen architecture"):
        get_teacher(checkpoint_cfg("small.pt"), data, torch.device("cpu"))


def test_bad_checkpoint_fails_only_its_run(engine, runs_dir):
    (runs_dir / "junk.pt").write_bytes(b"not a checkpoint")
    bad = engine.submit(checkpoint_cfg("junk.pt"), owner="t")
    good = engine.submit(cfg(), owner="t")
    assert engine.wait(bad, timeout=60) == "failed"
    assert "CheckpointError" in engine.snapshot(bad).error
    assert engine.wait(good, timeout=60) == "done"


def test_cached_teacher_that_is_corrupt_is_retrained(runs_dir):
    data = load_data(cfg().data)
    _, first = get_teacher(cfg(), data, torch.device("cpu"))
    path = runs_dir / "teachers" / f"{first['key']}.pt"
    path.write_bytes(b"corrupted on disk")
    _, again = get_teacher(cfg(), data, torch.device("cpu"))
    assert again["cached"] is False and again["test_acc"] == pytest.approx(first["test_acc"])
    assert "state_dict" in safe_load(path)


# ---- faults inside a worker ---------------------------------------------------------------------
def _boom_at_step_3(monkeypatch):
    orig = HintonKD.loss_terms

    def faulty(self, batch, step):
        if self.ctx.config.name == "boom" and step == 3:
            raise RuntimeError("injected fault at step 3")
        return orig(self, batch, step)
    monkeypatch.setattr(HintonKD, "loss_terms", faulty)


def test_exception_in_training_thread_is_recorded_and_engine_keeps_serving(engine, monkeypatch):
    _boom_at_step_3(monkeypatch)
    before = engine.submit(cfg("ok-1"), owner="a")
    boom = engine.submit(cfg("boom"), owner="b")
    assert engine.wait(boom, timeout=60) == "failed"
    snap = engine.snapshot(boom)
    assert snap.error == "RuntimeError: injected fault at step 3"
    assert "injected fault" in snap.traceback and "loss_terms" in snap.traceback
    assert engine.store.get_run(boom)["status"] == "failed"
    assert engine.store.get_run(boom)["error"] == snap.error
    after = engine.submit(cfg("ok-2"), owner="a")            # a new run, same single worker
    for rid in (before, after):
        assert engine.wait(rid, timeout=60) == "done"
        assert engine.snapshot(rid).latest["test_acc"] > 0.3
    # The fault ended its own run only: every run's thread has finished (none is left hanging, the
    # executor keeps the live ones) and the executor has its slot back.
    (ex,) = engine._executors
    for t in list(ex._threads):
        t.join(timeout=30)
    assert not [t.name for t in ex._threads if t.is_alive()]
    assert not ex.active


def test_faulty_subscriber_and_failing_store_do_not_kill_the_worker(engine, monkeypatch):
    """A page callback that raises is ignored; a store that raises while recording metrics fails
    that run (reported in memory even though the store is what broke) and the worker lives on."""
    rid = engine.submit(cfg("ok-1"), owner="a")
    engine.subscribe(rid, lambda ev: 1 / 0)
    assert engine.wait(rid, timeout=60) == "done"

    real_add = engine.store.add_metrics
    broken = threading.Event()

    def add_metrics(run_id, *a, **k):
        if engine.snapshot(run_id).name == "disk-full":
            broken.set()
            raise OSError(28, "No space left on device")
        return real_add(run_id, *a, **k)
    monkeypatch.setattr(engine.store, "add_metrics", add_metrics)
    real_status = engine.store.set_status

    def set_status(run_id, status, error=None):
        if broken.is_set() and status == "failed" and "No space" in (error or ""):
            raise OSError(28, "No space left on device")      # the store fails again
        return real_status(run_id, status, error)
    monkeypatch.setattr(engine.store, "set_status", set_status)
    bad = engine.submit(cfg("disk-full"), owner="a")
    assert engine.wait(bad, timeout=60) == "failed"
    assert "No space left" in engine.snapshot(bad).error
    nxt = engine.submit(cfg("ok-2"), owner="a")
    assert engine.wait(nxt, timeout=60) == "done"


def test_bad_config_is_refused_at_submit_not_in_the_worker(engine):
    with pytest.raises(ConfigError) as ei:
        engine.submit({"train": {"lr": float("nan")}}, owner="a")
    assert ei.value.field == "train.lr"
    assert engine.runs("a") == [] and engine.store.list_runs() == []
