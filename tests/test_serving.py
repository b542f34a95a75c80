"""Fair, concurrent serving.

Queued runs start round-robin by owner; time-sliced runs take turns so a newcomer's run shows
points while another owner's long run is still training; worker processes stream the same events
and a worker that dies fails only its own runs, which resume from their checkpoints.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from support import until
from kdengine.core.events import Metrics
from kdengine.core.store import Store
from kdengine.run.engine import Engine
from kdengine.run.scheduler import FairQueue, start_eta
from kdengine.run.time_slices import Baton, SlicedControl


# ---- the queue ------------------------------------------------------------------------------------
def test_fair_queue_serves_owners_round_robin_newcomers_first():
    q = FairQueue()
    for r in ("a1", "a2", "a3"):
        q.push(r, "ann")
    q.push("b1", "bob")
    q.push("c1", "cat")
    q.push("b2", "bob")
    assert q.order({}) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert q.order({"ann": 1}) == ["b1", "c1", "a1", "b2", "a2", "a3"]   # ann already trains one
    assert q.pop({"ann": 1, "bob": 1}, only_idle_owners=True) == "c1"
    assert q.pop({"ann": 1, "bob": 1, "cat": 1}, only_idle_owners=True) is None
    q.remove("b1")
    assert q.order({}) == ["a1", "b2", "a2", "a3"] and "b1" not in q and len(q) == 4


def test_start_eta_waits_for_slots_then_typical_runs():
    assert start_eta(0, [5.0, 2.0], 2, []) == 2.0           # the first slot to free up
    assert start_eta(1, [5.0, 2.0], 2, []) == 5.0
    assert start_eta(2, [5.0, 2.0], 2, [10.0]) == 15.0      # one more round after both
    assert start_eta(0, [None], 1, []) is None              # nothing timed yet
    assert start_eta(0, [None], 1, [4.0]) == 4.0


# ---- the baton --------------------------------------------------------------------------------------
def test_baton_hands_over_round_robin_by_owner():
    """Three of ann's runs and one of bob's share a baton: bob gets every other turn."""
    baton = Baton(slice_s=0.01)
    turns: list[str] = []
    lock = threading.Lock()

    def run(owner: str, steps: int):
        ctl = SlicedControl(owner)
        ctl.hold(baton)
        try:
            for _ in range(steps):
                with lock:
                    turns.append(owner)
                ctl.checkpoint()          # the trainer calls this when interrupt is raised
        finally:
            ctl.leave()
    first = SlicedControl("ann")
    first.hold(baton)                      # hold the baton until everyone is waiting
    threads = [threading.Thread(target=run, args=("ann", 6)) for _ in range(3)]
    threads.append(threading.Thread(target=run, args=("bob", 6)))
    for t in threads:
        t.start()
    while baton.waiting() < 4:
        time.sleep(0.005)
    first.leave()
    for t in threads:
        t.join(10)
    baton.close()
    assert len(turns) == 24
    bob = [i for i, o in enumerate(turns) if o == "bob"]
    assert bob[:5] == [1, 3, 5, 7, 9]      # ann, bob, ann, bob, ...: bob is not behind 3 runs


# ---- time-sliced threads: a newcomer is not starved -------------------------------------------
def test_newcomer_gets_points_while_a_long_run_trains(runs_dir, tiny_cfg):
    eng = Engine(store=Store(runs_dir), max_workers=1, slots=2)
    try:
        warm = eng.submit(tiny_cfg, owner="warm")           # caches the teacher
        assert eng.wait(warm, 120) == "done"
        long_runs = [eng.submit(tiny_cfg.with_overrides({"train.epochs": 1000}), owner="ann")
                     for _ in range(3)]
        newcomer = eng.submit(tiny_cfg, owner="bob")
        assert eng.snapshot(long_runs[2]).queue_position == 0      # ann's third run waits
        assert eng.status(newcomer) == "running"            # admitted although the slots are full
        assert eng.wait(newcomer, 120) == "done"
        assert [eng.status(r) for r in long_runs[:2]] == ["running", "running"]
        assert eng.status(long_runs[2]) == "queued"
        for r in long_runs:
            eng.stop(r)
        assert [eng.wait(r, 60) for r in long_runs] == ["stopped"] * 3
    finally:
        eng.shutdown()


# ---- worker processes --------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_worker_processes_stream_pause_stop_and_survive_a_killed_worker(runs_dir, tiny_cfg):
    eng = Engine(store=Store(runs_dir), max_workers=1, slots=2, processes=True)
    try:
        rid = eng.submit(tiny_cfg, owner="ann")
        assert eng.wait(rid, 180) == "done", eng.snapshot(rid).error
        snap = eng.snapshot(rid)
        assert [p[1] for p in snap.series["test_acc"]] == [1.0, 2.0]
        assert eng.store.series(rid)["test_acc"] == snap.series["test_acc"]
        assert snap.summary["final_test_acc"] > 0.3 and eng.store.checkpoint_path(rid).exists()

        slow = tiny_cfg.with_overrides({"train.epochs": 300, "train.checkpoint_every": 1})
        long_id = eng.submit(slow, owner="ann")
        first = threading.Event()
        eng.subscribe(long_id, lambda e: first.set() if isinstance(e, Metrics)
                      and "test_acc" in e.values else None)
        assert first.wait(120)
        eng.pause(long_id)
        assert eng.wait_for(long_id, "paused", 30)
        step = eng.snapshot(long_id).step
        time.sleep(0.3)
        assert eng.snapshot(long_id).step == step
        eng.resume(long_id)
        assert eng.wait_for(long_id, "running", 30)

        worker = eng._executors[0].process
        os.kill(worker.pid, signal.SIGKILL)
        # the run goes on by itself, in a new worker, from its last checkpoint
        assert until(lambda: any("stopped unexpectedly" in n
                                  for n in eng.snapshot(long_id).notices), 60)
        assert eng._executors[0].process.pid != worker.pid           # a new worker took over
        assert until(lambda: any("Resumed from the checkpoint" in n
                                  for n in eng.snapshot(long_id).notices), 60)
        notices = eng.snapshot(long_id).notices
        assert any("continues from its last checkpoint (epoch" in n for n in notices), notices
        epochs = [p[1] for p in eng.store.series(long_id)["test_acc"]]
        assert epochs == sorted(set(epochs))          # no epoch twice: points after it went
        # once: a second death of its worker fails it, resumable by hand
        first = threading.Event()
        eng.subscribe(long_id, lambda e: first.set() if isinstance(e, Metrics)
                      and "test_acc" in e.values else None)
        assert first.wait(120)
        os.kill(eng._executors[0].process.pid, signal.SIGKILL)
        assert eng.wait(long_id, 60) == "failed"
        err = eng.snapshot(long_id).error
        assert "stopped unexpectedly" in err and "again" in err and "Continue" in err, err
        assert eng.store.get_run(long_id)["status"] == "failed"
        eng.resume_run(long_id)
        assert eng.wait_for(long_id, "running", 60)
        eng.stop(long_id)
        assert eng.wait(long_id, 120) == "stopped"
    finally:
        eng.shutdown()
