"""Sweeps: a 2 x 2 grid on each backend stores four runs with the right configs; an interrupted
sweep resumes without training its finished cells again."""
from __future__ import annotations

import time

import pytest

from kdengine import ConfigError, Engine, Store
from kdengine.experiments.sweeps import (SweepSpec, cell_overrides, parse_values, resume_sweep, start_sweep,
                             stored_cells)

AXES = {"method.params.T": [2.0, 6.0], "method.params.soft_weight": [0.5, 0.9]}


def _spec(tiny_cfg, backend, **kw):
    return SweepSpec(base=tiny_cfg.to_dict(), axes=dict(AXES), backend=backend, name="t", **kw)


def _check_four_runs(store, sweep):
    runs = [r for r in store.list_runs() if r["parent"] == sweep.id]
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    got = sorted((r["config"]["method"]["params"]["T"], r["config"]["method"]["params"]["soft_weight"])
                 for r in runs)
    assert got == [(2.0, 0.5), (2.0, 0.9), (6.0, 0.5), (6.0, 0.9)]
    for cell in sweep.cells:
        row = store.get_run(cell.run_id)
        assert row["config_hash"] == cell.hash
        assert row["config"]["method"]["params"]["T"] == cell.overrides["method.params.T"]
        assert isinstance(row["summary"]["final_test_acc"], float)
        assert store.checkpoint_path(cell.run_id).exists()
    assert store.get_sweep(sweep.id)["status"] == "done"
    return {tuple(c.overrides.values()): store.get_run(c.run_id)["summary"]["final_test_acc"]
            for c in sweep.cells}


def test_cells_and_values():
    spec = SweepSpec(base={}, axes={"a": [1, 2], "b": [3, 4, 5]})
    assert cell_overrides(spec) == [{"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 1, "b": 5},
                                    {"a": 2, "b": 3}, {"a": 2, "b": 4}, {"a": 2, "b": 5}]
    spec.mode, spec.n_random = "random", 3
    picked = cell_overrides(spec)
    assert len(picked) == 3 and picked == cell_overrides(spec)       # seeded, repeatable
    assert parse_values("1, 2.5, adam, true") == [1, 2.5, "adam", True]


def test_bad_sweeps_fail_before_anything_runs(engine, tiny_cfg):
    with pytest.raises(ConfigError, match="train.epochz"):
        start_sweep(engine, SweepSpec(base=tiny_cfg.to_dict(), axes={"train.epochz": [1]}))
    with pytest.raises(ConfigError, match="method.params.T"):
        start_sweep(engine, SweepSpec(base=tiny_cfg.to_dict(), axes={"method.params.T": [-1.0]}))
    assert engine.store.list_runs() == []


def test_local_and_vectorised_backends_store_the_same_four_cells(runs_dir, tiny_cfg):
    results = {}
    for backend in ("local", "vectorised"):
        # separate stores, so the second backend cannot reuse the first one's cells
        eng = Engine(Store(runs_dir / backend), max_workers=1)
        sw = start_sweep(eng, _spec(tiny_cfg, backend))
        assert sw.wait(240) == "done", sw.error
        assert {c.backend for c in sw.cells} == {backend}
        results[backend] = _check_four_runs(eng.store, sw)
        eng.shutdown()
    # same seeds, batches and init: the same result (weights agree to ~1e-7; the margin allows an
    # argmax tie on a few test samples to break differently on another CPU's BLAS)
    for key, acc in results["local"].items():
        assert results["vectorised"][key] == pytest.approx(acc, abs=0.01)


def test_resume_after_interruption_skips_finished_cells(engine, tiny_cfg):
    cfg = tiny_cfg.with_overrides({"train.epochs": 3})
    sw = start_sweep(engine, _spec(cfg, "local"))
    end = time.monotonic() + 120
    while not any(c.status == "done" for c in sw.cells) and time.monotonic() < end:
        time.sleep(0.05)
    sw.stop()                                   # the interruption
    assert sw.wait(60) == "stopped"
    finished = {c.hash: c.run_id for c in sw.cells if c.status == "done"}
    assert 1 <= len(finished) < 4
    assert {r["status"] for r in stored_cells(engine.store, sw.id)} - {"done", "stopped", "queued"} == set()

    again = resume_sweep(engine, sw.id)
    assert again.id == sw.id and again.wait(240) == "done", again.error
    for c in again.cells:
        if c.hash in finished:                  # reused, not trained again
            assert c.reused and c.run_id == finished[c.hash]
        assert len(engine.store.runs_by_hash(c.hash, ("done",))) == 1
    _check_four_runs(engine.store, again)


def test_ray_backend_small_sweep(runs_dir, tiny_cfg, monkeypatch):
    pytest.importorskip("ray", reason="the ray backend is optional (requirements-cluster.txt)")
    monkeypatch.setenv("KD_RAY_CPUS", "2")     # a local Ray instance limited to two cores
    eng = Engine(Store(), max_workers=1)
    try:
        sw = start_sweep(eng, _spec(tiny_cfg, "ray"))
        assert sw.wait(600) == "done", sw.error
        assert {c.backend for c in sw.cells} == {"ray"}
        _check_four_runs(eng.store, sw)
        assert "test_acc" in eng.store.series(sw.cells[0].run_id)
    finally:
        eng.shutdown()
