"""The engine on a two-node Ray cluster (``ray.cluster_utils.Cluster``: a head node and a worker
node on this machine): a class of 8 finishes, a 16-trial search asks and tells through the same
engine, and when the worker node is killed mid-run no run is lost: each run it hosted continues
from its last checkpoint on the node left, with a notice."""
from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from support import until  # noqa: E402
from kdengine.core.events import Metrics  # noqa: E402
from kdengine.core.store import Store  # noqa: E402
from kdengine.run.engine import Engine  # noqa: E402


@pytest.fixture
def two_nodes():
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_a_class_and_a_search_on_two_nodes_survive_a_lost_node(runs_dir, tiny_cfg, two_nodes):
    cluster, worker = two_nodes
    eng = Engine(store=Store(runs_dir), ray_address=cluster.address)
    try:
        assert eng.capacity == 3                                # the cluster's CPUs, one run each
        cfg = tiny_cfg.with_overrides({"train.epochs": 20})
        ids = [eng.submit(cfg.with_overrides({"method.params.T": 1.0 + i}), owner=f"student-{i}")
               for i in range(8)]
        epochs_seen: dict[str, int] = {}
        for rid in ids:
            eng.subscribe(rid, lambda e, rid=rid: epochs_seen.__setitem__(rid, int(e.epoch))
                          if isinstance(e, Metrics) and "test_acc" in e.values else None)
        # three runs train (one per CPU), at least one has checkpointed an epoch: kill the node
        # that hosts two of them
        assert until(lambda: len([r for r in ids if eng.status(r) == "running"]) == 3
                      and any(eng.store.checkpoint_path(r).exists() for r in ids), 300)
        cluster.remove_node(worker, allow_graceful=False)
        deadline = time.monotonic() + 300      # for the whole class: a stuck run fails, not hangs
        for rid in ids:
            assert eng.wait(rid, max(1.0, deadline - time.monotonic())) == "done", \
                (eng.snapshot(rid).status, eng.snapshot(rid).error)
        snaps = [eng.snapshot(r) for r in ids]
        moved = [s for s in snaps if any("stopped unexpectedly" in n for n in s.notices)]
        assert moved, "no run was on the lost node"
        for s in snaps:                                         # nothing lost, nothing twice
            assert [p[1] for p in s.series["test_acc"]] == [float(e) for e in range(1, 21)]
            assert [p[1] for p in eng.store.series(s.run_id)["test_acc"]] == \
                [float(e) for e in range(1, 21)]
            assert eng.store.checkpoint_path(s.run_id).exists()

        from kdengine.experiments.search import SearchSpec, start_search
        space = {"method.params.T": {"low": 1.0, "high": 16.0, "log": True},
                 "train.lr": {"low": 1e-3, "high": 3e-2, "log": True}}
        spec = SearchSpec(base=tiny_cfg.with_overrides({"train.epochs": 1}).to_dict(), space=space,
                          n_trials=16, seed=None, pruner="none", name="on ray")
        se = start_search(eng, spec, owner="instructor")
        assert se.wait(300) == "done", se.error
        rows = se.rows()
        assert len(rows) == 16 and {r["state"] for r in rows} <= {"complete", "reused"}
        for r in rows:
            assert eng.store.get_run(r["run_id"])["status"] == "done"
    finally:
        eng.shutdown()
