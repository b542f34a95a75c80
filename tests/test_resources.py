"""Runs too big for the machine are refused before they start, naming the knob to
change; the run store can be pruned (``Store.prune`` and ``python -m kdengine prune``)."""
from __future__ import annotations

import pytest

from kdengine import ConfigError, RunConfig, Store, cli
from kdengine.models.families import build_model, count_params
from kdengine.run.resources import data_shape, estimate_bytes, memory_limit, model_footprint


def small(**over) -> RunConfig:
    base = RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 32}, "epochs": 1},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "train": {"epochs": 1, "log_every": 10}})
    return base.with_overrides(over) if over else base


@pytest.mark.parametrize("over,field", [
    ({"student.depth": 16, "student.width": 4096}, "student.width"),
    ({"teacher.model.depth": 16, "teacher.model.width": 4096}, "teacher.model.width"),
    ({"data.name": "cifar10", "student.arch": "cnn", "student.depth": 4, "student.width": 128,
      "teacher.model.arch": "cnn", "teacher.model.depth": 2, "teacher.model.width": 8,
      "train.batch_size": 8192}, "train.batch_size"),
])
def test_too_big_is_refused_at_submit_naming_the_field(engine, monkeypatch, over, field):
    monkeypatch.setenv("KD_MAX_RUN_GIB", "1")
    with pytest.raises(ConfigError) as ei:
        engine.submit(small(**over), owner="a")
    assert ei.value.field == field
    assert "GiB" in ei.value.message and field in ei.value.message
    assert engine.store.list_runs() == [] and engine.runs() == []     # nothing was started


def test_huge_toy_data_set_is_refused_naming_n_samples(engine, monkeypatch):
    monkeypatch.setenv("KD_MAX_RUN_GIB", "0.004")                     # about 4 MiB
    cfg = small(**{"data.name": "moons", "data.n_samples": 200_000, "data.n_classes": 2})
    with pytest.raises(ConfigError) as ei:
        engine.submit(cfg, owner="a")
    assert ei.value.field == "data.n_samples"


def test_a_run_that_fits_is_accepted_and_runs(engine, monkeypatch):
    monkeypatch.setenv("KD_MAX_RUN_GIB", "1")
    rid = engine.submit(small(), owner="a")
    assert engine.wait(rid, timeout=60) == "done"


@pytest.mark.parametrize("arch,depth,width,data", [
    ("mlp", 3, 100, "digits"), ("cnn", 3, 8, "digits"), ("resnet", 8, 16, "cifar10"),
    ("transformer", 2, 32, "text")])
def test_parameter_counts_are_exact(arch, depth, width, data):
    """The estimate builds every family on the meta device: its counts are the real ones."""
    cfg = small(**{"data.name": data, "student.arch": arch, "student.depth": depth,
                   "student.width": width, "teacher.model.arch": arch,
                   "teacher.model.depth": depth})
    shape, k, _ = data_shape(cfg)
    est, acts, _ = model_footprint(cfg.student, shape, k, batch=4)
    assert est == count_params(build_model(cfg.student, shape, k))
    assert acts > 0


def test_activations_scale_with_batch_and_the_estimate_with_size():
    cfg = small()
    shape, k, _ = data_shape(cfg)
    _, a8, _ = model_footprint(cfg.student, shape, k, batch=8)
    _, a64, _ = model_footprint(cfg.student, shape, k, batch=64)
    assert a64 == 8 * a8
    assert estimate_bytes(small(**{"student.width": 512}))[0] > estimate_bytes(small())[0]


def test_memory_limit_env_and_fallback(monkeypatch):
    monkeypatch.setenv("KD_MAX_RUN_GIB", "2")
    assert memory_limit(small()) == 2 * 2**30
    for junk in ("lots", "nan", "-1", "0"):
        monkeypatch.setenv("KD_MAX_RUN_GIB", junk)
        assert memory_limit(small()) > 0                  # machine-derived, never junk or zero


# ---- pruning the store --------------------------------------------------------------------------
def _fill(store: Store, statuses: list[str]) -> list[str]:
    ids = []
    for i, st in enumerate(statuses):
        rid = store.create_run({"method": {"name": "ce"}}, f"h{i}", owner="a", name=f"r{i}")
        store.set_status(rid, st)
        store.add_metrics(rid, [(1, 1.0, {"test_acc": 0.5})])
        ck = store.checkpoint_path(rid)
        ck.parent.mkdir(parents=True, exist_ok=True)
        ck.write_bytes(b"x")
        store._tx("UPDATE runs SET created = ? WHERE id = ?", (1000.0 + i, rid))   # ordered
        ids.append(rid)
    return ids


def test_prune_keeps_newest_finished_and_every_active_run(runs_dir):
    store = Store(runs_dir)
    ids = _fill(store, ["done", "failed", "running", "stopped", "done"])
    assert store.prune(keep=2) == 2
    left = {r["id"] for r in store.list_runs()}
    assert left == {ids[2], ids[3], ids[4]}                # the live run is never pruned
    for rid in (ids[0], ids[1]):
        assert store.metrics(rid) == [] and not store.checkpoint_path(rid).exists()
    assert store.metrics(ids[4]) and store.checkpoint_path(ids[4]).exists()


def test_prune_from_the_cli(runs_dir, capsys):
    store = Store(runs_dir)
    ids = _fill(store, ["done", "done", "interrupted"])
    assert cli.main(["prune", "--keep", "1"]) == 0
    assert "deleted 2" in capsys.readouterr().out
    assert [r["id"] for r in Store(runs_dir).list_runs()] == [ids[2]]
