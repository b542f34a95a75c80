"""The Lab's runs on a Ray cluster (here a local Ray instance the test starts):
live events stream back, the store and the checkpoint land on this machine, stop works."""
from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from kdengine.core.events import Ended, Metrics  # noqa: E402
from kdengine.core.store import Store  # noqa: E402
from kdengine.run.engine import Engine  # noqa: E402


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_engine_runs_on_ray_with_live_events_and_stop(runs_dir, tiny_cfg, local_ray):
    eng = Engine(store=Store(runs_dir), ray_address="local")
    try:
        assert eng.capacity == 2                           # the cluster's CPUs, one run each
        rid = eng.submit(tiny_cfg, owner="ann")
        live: list[dict] = []
        eng.subscribe(rid, lambda e: live.append(e) if isinstance(e, Metrics) else None)
        assert eng.wait(rid, 300) == "done", eng.snapshot(rid).error
        snap = eng.snapshot(rid)
        assert [p[1] for p in snap.series["test_acc"]] == [1.0, 2.0]
        assert eng.store.series(rid)["test_acc"] == snap.series["test_acc"]
        assert any("loss/total" in e.values for e in live)         # streamed while training
        assert snap.summary["final_test_acc"] > 0.3
        assert eng.store.checkpoint_path(rid).exists()              # copied back from the node

        long_id = eng.submit(tiny_cfg.with_overrides({"train.epochs": 500}), owner="bob")
        first = threading.Event()
        eng.subscribe(long_id, lambda e: first.set() if isinstance(e, Metrics)
                      and "test_acc" in e.values else None)
        assert first.wait(300)
        eng.stop(long_id)
        assert eng.wait(long_id, 120) == "stopped"
        assert eng.store.get_run(long_id)["status"] == "stopped"
    finally:
        eng.shutdown()


def test_a_class_on_ray_takes_turns_on_each_worker(runs_dir, tiny_cfg, local_ray):
    """With several slots a worker actor time-slices its runs as a worker process does: six
    students on two CPUs each see a training point before any of them is done."""
    eng = Engine(store=Store(runs_dir), ray_address="local", slots=4)
    try:
        assert eng.capacity == 8 and eng.wait_ready(120)
        cfg = tiny_cfg.with_overrides({"train.epochs": 40})
        ids = [eng.submit(cfg.with_overrides({"method.params.T": 1.0 + i}), owner=f"student-{i}")
               for i in range(6)]
        first_point: set[str] = set()
        done_before_all_started = threading.Event()

        def watch(rid):
            def on(ev):
                if isinstance(ev, Metrics) and "loss/total" in ev.values:
                    first_point.add(rid)
                elif isinstance(ev, Ended) and len(first_point) < len(ids):
                    done_before_all_started.set()
            return on
        for rid in ids:
            eng.subscribe(rid, watch(rid))
        deadline = time.monotonic() + 300      # for the whole class: a stuck run fails, not hangs
        for rid in ids:
            assert eng.wait(rid, max(1.0, deadline - time.monotonic())) == "done", \
                (eng.snapshot(rid).status, eng.snapshot(rid).error)
        assert first_point == set(ids) and not done_before_all_started.is_set()
    finally:
        eng.shutdown()
