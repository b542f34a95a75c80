"""The search on Ray Tune (OptunaSearch + ASHA) on a local Ray instance: one small study."""
from __future__ import annotations

import pytest

from kdengine.core.store import Store
from kdengine.experiments.search import SearchSpec, start_search
from kdengine.run.engine import Engine


def test_ray_search_stores_trials_and_asha_prunes(runs_dir, tiny_cfg, monkeypatch):
    pytest.importorskip("ray", reason="the ray backend is optional (requirements-cluster.txt)")
    monkeypatch.setenv("KD_RAY_CPUS", "2")     # a local Ray instance limited to two cores
    base = tiny_cfg.with_overrides({"train.epochs": 3})
    space = {"train.lr": {"low": 1e-5, "high": 3e-2, "log": True},
             "method.params.T": {"low": 1.0, "high": 16.0, "log": True}}
    eng = Engine(Store(), max_workers=1)
    try:
        se = start_search(eng, SearchSpec(base=base.to_dict(), space=space, n_trials=6, seed=0,
                                          pruner="asha", backend="ray", name="ray"))
        assert se.wait(600) == "done", se.error
        rows, store = se.rows(), eng.store
        assert len(rows) == 6 and {r["state"] for r in rows} <= {"complete", "pruned"}
        assert any(r["state"] == "pruned" for r in rows), "ASHA stopped nothing"
        assert se.epochs_used() < 6 * 3
        for r in rows:
            run = store.get_run(r["run_id"])
            assert run["parent"] == se.id and run["config"]["train"]["lr"] == r["train.lr"]
            assert len(store.series(r["run_id"])["val_acc"]) == r["epochs"]
            if r["state"] == "complete":
                assert run["status"] == "done" and r["value"] == run["summary"]["final_val_acc"]
                assert store.checkpoint_path(r["run_id"]).exists()
            else:
                assert run["status"] == "stopped" and "pruned" in run["error"]
        assert store.get_sweep(se.id)["state"]["epochs_used"] == se.epochs_used()
    finally:
        eng.shutdown()
