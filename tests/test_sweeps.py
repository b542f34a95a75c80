"""Sweeps: a 2 x 2 grid on each backend stores four runs with the right configs; the cells go
through the engine's queue and resource check like any run; an interrupted sweep resumes without
training its finished cells again; a sweep stored with the retired ray backend still resumes."""
from __future__ import annotations

import time

import pytest

from kdengine import ConfigError, Engine, Store
from kdengine.core.checkpoints import read_run_checkpoint
from kdengine.experiments.sweeps import (Sweep, SweepSpec, cell_overrides, parse_values, resume_sweep,
                                         start_sweep, stored_cells)

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
        stacked = {eng.store.get_run(c.run_id)["summary"].get("stacked") for c in sw.cells}
        assert stacked == ({4} if backend == "vectorised" else {None})     # one pass of four
        eng.shutdown()
    # same seeds, batches and init: the same result (weights agree to ~1e-7; the margin allows an
    # argmax tie on a few test samples to break differently on another CPU's BLAS)
    for key, acc in results["local"].items():
        assert results["vectorised"][key] == pytest.approx(acc, abs=0.01)


def test_a_vectorised_sweep_on_worker_processes_trains_in_the_workers(runs_dir, tiny_cfg, monkeypatch):
    """The server only submits and records: no unit of the sweep (its teacher included) trains in
    this process when the engine has worker processes."""
    import kdengine.run.units as units
    trained_here: list[str] = []
    real = units._train
    monkeypatch.setattr(units, "_train", lambda build, control, unit, emit: (
        trained_here.append(unit.unit_id), real(build, control, unit, emit)))
    eng = Engine(Store(runs_dir), max_workers=1, processes=True)
    try:
        sw = start_sweep(eng, _spec(tiny_cfg, "vectorised"))
        assert sw.wait(300) == "done", sw.error
        _check_four_runs(eng.store, sw)
        assert {eng.store.get_run(c.run_id)["summary"].get("stacked") for c in sw.cells} == {4}
    finally:
        eng.shutdown()
    assert trained_here == []


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


def test_vectorised_cells_queue_behind_another_owners_run_as_one_entry(engine, tiny_cfg):
    """The cells are the engine's runs: they wait in its fair queue while another owner's run holds
    the only worker, as one queue entry, and train as one stacked pass when it is free."""
    blocker = engine.submit(tiny_cfg.with_overrides({"train.epochs": 200}), owner="alice")
    assert engine.wait_for(blocker, "running", 60)
    engine.pause(blocker)                       # holds the only worker until resumed
    assert engine.wait_for(blocker, "paused", 60)
    sw = start_sweep(engine, _spec(tiny_cfg, "vectorised"), owner="bob")
    end = time.monotonic() + 60
    while not all(c.run_id for c in sw.cells) and time.monotonic() < end:
        time.sleep(0.02)
    rids = [c.run_id for c in sw.cells]
    mine = {s.run_id: s for s in engine.runs("bob")}
    assert set(rids) == set(mine) and {s.parent for s in mine.values()} == {sw.id}
    assert all(mine[r].status == "queued" for r in rids)
    assert set(engine.queued()) == set(rids)
    assert {engine.queue_info(r)[0] for r in rids} == {0}            # one entry for the group
    engine.stop(blocker)
    assert sw.wait(240) == "done", sw.error
    assert engine.status(blocker) == "stopped"
    for r in rids:
        assert engine.snapshot(r).summary["stacked"] == 4


def test_a_stacked_sweep_too_big_for_this_machine_is_refused_naming_the_field(engine, tiny_cfg,
                                                                               monkeypatch):
    from kdengine.run.resources import estimate_bytes
    wide = tiny_cfg.with_overrides({"student.depth": 2, "student.width": 512})
    one, field = estimate_bytes(wide)
    four, _ = estimate_bytes(wide, stacked=4)
    assert field == "student.width" and four > 2 * one
    monkeypatch.setenv("KD_MAX_RUN_GIB", str((one + four) / 2 / 2**30))   # one fits, four do not
    Sweep(engine, _spec(wide, "local"))                          # every cell alone fits
    with pytest.raises(ConfigError, match="these 4 stacked runs need") as e:
        start_sweep(engine, _spec(wide, "vectorised"))
    assert e.value.field == "student.width" and "stack fewer runs" in str(e.value)
    with pytest.raises(ConfigError) as e:                        # the engine's own check says so too
        engine.submit_group([wide.with_overrides({"method.params.T": t}) for t in (1.0, 2.0, 3.0, 4.0)])
    assert e.value.field == "student.width"
    assert engine.store.list_runs() == [] and engine.store.list_sweeps() == []


def test_a_stopped_vectorised_sweep_continues_each_cell_from_its_checkpoint(engine, tiny_cfg):
    sw = start_sweep(engine, _spec(tiny_cfg.with_overrides({"train.epochs": 12}), "vectorised"))
    end = time.monotonic() + 120
    while not all("test_acc" in c.live for c in sw.cells) and time.monotonic() < end:
        time.sleep(0.02)
    sw.stop()
    assert sw.wait(60) == "stopped"
    first = {c.hash: c.run_id for c in sw.cells}
    assert {c.status for c in sw.cells} == {"stopped"}
    epochs = {r: read_run_checkpoint(engine.store.checkpoint_path(r)).epoch for r in first.values()}
    assert all(1 <= e < 12 for e in epochs.values())
    again = resume_sweep(engine, sw.id)
    assert again.wait(240) == "done", again.error
    for c in again.cells:                          # continued under its id, alone, to the end
        assert c.run_id == first[c.hash] and c.backend == "local"
        assert len(engine.store.runs_by_hash(c.hash)) == 1
        series = engine.store.series(c.run_id)["test_acc"]
        assert [p[1] for p in series] == [float(e) for e in range(1, 13)]
    _check_four_runs(engine.store, again)


def test_a_sweep_stored_with_the_ray_backend_resumes_on_local_and_says_so(engine, tiny_cfg):
    spec = _spec(tiny_cfg, "local").__dict__ | {"backend": "ray"}       # as an older version stored it
    engine.store.save_sweep("sw-old-ray", "sweep", spec, {"cells": []}, "interrupted", name="t")
    sw = resume_sweep(engine, "sw-old-ray")
    assert sw.spec.backend == "local" and len(sw.notices) == 1
    assert "ray backend, which is gone" in sw.notices[0] and "KD_RAY_ADDRESS" in sw.notices[0]
    assert sw.wait(240) == "done", sw.error
    assert {c.backend for c in sw.cells} == {"local"}
    _check_four_runs(engine.store, sw)
    assert engine.store.get_sweep(sw.id)["state"]["notices"] == sw.notices   # the page shows these
    with pytest.raises(ConfigError, match="local, vectorised") as e:   # a new spec must name one
        _spec(tiny_cfg, "ray").validate()
    assert e.value.field == "backend"
