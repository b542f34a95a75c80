"""Cohorts: runs from different sessions with the same data, teacher and student train as stacked
students in one pass, and each stays an ordinary run: its own metrics (those of the same run alone),
its own checkpoint (what a run alone saves), its own stop / pause / resume, one queue entry and one
slot for the whole cohort."""
from __future__ import annotations


import pytest
import torch

from support import until
from kdengine.core.events import Checkpoint, Ended, Metrics
from kdengine import Engine, RunConfig, Store
from kdengine.core.checkpoints import RunCheckpoint, read_run_checkpoint
from kdengine.run.control import Control
from kdengine.run.serving import serving_options
from kdengine.run.stacked import why_not_cohort
from kdengine.run.units import RunTicket, Unit, make_trainer, train_unit

WINDOW = 0.3


def _cfg(tiny_cfg: RunConfig, epochs: int = 3, **overrides) -> RunConfig:
    return tiny_cfg.with_overrides({"train.epochs": epochs, **overrides})


def _solo(cfg: RunConfig) -> dict:
    """A run of ``cfg`` alone: its metrics and its final checkpoint."""
    series: dict[str, list[float]] = {}
    checkpoints: list[Checkpoint] = []

    def emit(ev):
        if isinstance(ev, Metrics):
            for k, v in ev.values.items():
                series.setdefault(k, []).append(v)
        elif isinstance(ev, Checkpoint):
            checkpoints.append(ev)
    summary = make_trainer(cfg, emit).run()
    return {"series": series, "checkpoint": RunCheckpoint.from_bytes(checkpoints[-1].data),
            "summary": summary}


def _same_checkpoint(mine: RunCheckpoint, alone: RunCheckpoint) -> None:
    """Everything a run alone saves, and nothing else: weights, optimiser slice, RNG, position."""
    assert (mine.epoch, mine.step, mine.config_hash, mine.format) == \
        (alone.epoch, alone.step, alone.config_hash, alone.format)
    assert torch.equal(mine.rng, alone.rng) and torch.equal(mine.torch_rng, alone.torch_rng)
    assert mine.scheduler == alone.scheduler and mine.extra == alone.extra == []
    assert mine.method == alone.method
    assert set(mine.state_dict) == set(alone.state_dict)
    for k, v in alone.state_dict.items():
        torch.testing.assert_close(mine.state_dict[k], v, rtol=1e-4, atol=1e-5)
    opt_m, opt_a = mine.optimizer, alone.optimizer
    assert opt_m["param_groups"] == opt_a["param_groups"]
    assert set(opt_m["state"]) == set(opt_a["state"])
    for i, st in opt_a["state"].items():
        assert set(opt_m["state"][i]) == set(st)
        for k, v in st.items():
            torch.testing.assert_close(opt_m["state"][i][k], v, rtol=1e-3, atol=1e-6)


def test_which_runs_may_join_a_cohort(runs_dir, tiny_cfg):
    assert why_not_cohort(tiny_cfg) == ""
    assert "only MLP students" in why_not_cohort(tiny_cfg.with_overrides({"student.arch": "cnn"}))
    assert "dropout" in why_not_cohort(tiny_cfg.with_overrides({"student.dropout": 0.2}))
    sobolev = RunConfig.from_dict({**tiny_cfg.to_dict(), "method": {"name": "sobolev", "params": {}}})
    assert "sobolev trains one student at a time" in why_not_cohort(sobolev)
    eng = Engine(store=Store(runs_dir), max_workers=1)
    assert eng.batch_window_s == 0.0                                 # off for a bare Engine()
    eng.shutdown()


def test_serving_turns_the_window_on_for_worker_processes_and_ray(monkeypatch):
    monkeypatch.setenv("KD_SERVE", "processes")
    monkeypatch.delenv("KD_BATCH_WINDOW", raising=False)
    monkeypatch.delenv("KD_SLOTS", raising=False)
    assert serving_options()["batch_window_s"] == 0.3
    monkeypatch.setenv("KD_BATCH_WINDOW", "0")
    assert serving_options()["batch_window_s"] == 0.0
    monkeypatch.setenv("KD_BATCH_WINDOW", "0.5")
    monkeypatch.setenv("KD_RAY_ADDRESS", "local")        # Ray workers time-slice and take cohorts
    assert serving_options() == {"ray_address": "local", "slots": 4, "batch_window_s": 0.5}
    monkeypatch.setenv("KD_SERVE", "threads")            # the Ray address wins
    assert serving_options()["ray_address"] == "local"


def test_windows_queue_in_the_order_they_opened_whatever_order_their_timers_fire():
    # on a busy machine a later window's timer can fire first: the earlier windows close with it
    from types import SimpleNamespace
    from kdengine.run.cohort_windows import CohortWindows
    from kdengine.run.scheduler import FairQueue

    def job(run_id, owner):
        return SimpleNamespace(state=SimpleNamespace(run_id=run_id, owner=owner), gathering=None,
                               group=None)
    q = FairQueue()
    b = CohortWindows(q)
    first = b.gather(job("a1", "ann"), "seed0")
    b.gather(job("a2", "bob"), "seed0")
    lone = b.gather(job("d1", "dan"), "seed1")
    last = b.gather(job("e1", "eve"), "seed2")
    b.gather(job("e2", "fay"), "seed2")
    b.close("seed2", last)                  # the last window's timer first: all three close
    assert b.waiting() == []
    order = q.order({})
    assert order[1] == "d1"
    assert [[j.state.run_id for j in b.group(order[i]).jobs] for i in (0, 2)] == [["a1", "a2"],
                                                                                  ["e1", "e2"]]
    b.close("seed0", first)                 # the earlier timers, late: nothing left to close
    b.close("seed1", lone)
    assert q.order({}) == order


def test_sessions_runs_train_as_one_cohort_each_as_it_would_alone(runs_dir, tiny_cfg):
    """Three owners' runs (T differs) stack; a run with another seed does not. While a paused run
    holds the only slot, the cohort waits as one queue entry; a cohort whose other members were
    stopped before it started trains its last member alone."""
    eng = Engine(store=Store(runs_dir), max_workers=1, batch_window_s=WINDOW)
    try:
        blocker = eng.submit(_cfg(tiny_cfg, 200, **{"student.width": 8}), owner="zed")
        assert eng.wait_for(blocker, "running", 60)
        eng.pause(blocker)
        assert eng.wait_for(blocker, "paused", 60)
        cfgs = [_cfg(tiny_cfg, **{"method.params.T": t}) for t in (2.0, 4.0, 8.0)]
        ids = [eng.submit(c, owner=o) for c, o in zip(cfgs, ("ann", "bob", "cat"))]
        other = eng.submit(_cfg(tiny_cfg, **{"train.seed": 1}), owner="dan")
        pair = [eng.submit(_cfg(tiny_cfg, **{"train.seed": 2}), owner=o) for o in ("eve", "fay")]
        assert all(eng.queue_info(r)[0] == 0 for r in ids)          # in the window
        assert len(eng.queued()) == 6
        assert until(lambda: eng.queue_info(pair[1])[0] == 2)  # the windows close by themselves
        positions = {r: eng.queue_info(r)[0] for r in ids + [other] + pair}
        assert len({positions[r] for r in ids}) == 1                 # one entry for the cohort
        assert sorted(positions.values()) == [0, 0, 0, 1, 2, 2]
        eng.stop(pair[0])
        assert eng.status(pair[0]) == "stopped" and eng.queue_info(pair[1])[0] == 2
        eng.stop(blocker)
        for r in ids + [other, pair[1]]:
            assert eng.wait(r, 120) == "done", eng.snapshot(r).error
        for r in (other, pair[1]):                                   # another seed; the last one
            assert "stacked" not in eng.snapshot(r).summary
        for i, (rid, cfg) in enumerate(zip(ids, cfgs)):
            snap = eng.snapshot(rid)
            assert snap.summary["stacked"] == 3
            assert any("together with 2 other runs" in n for n in snap.notices)
            if i:
                continue                        # one member against its run alone is enough
            alone = _solo(cfg)
            _same_checkpoint(read_run_checkpoint(eng.store.checkpoint_path(rid)), alone["checkpoint"])
            stored = eng.store.series(rid)
            for k in ("loss/kd", "loss/total", "test_acc", "teacher_test_acc"):
                assert [p[2] for p in snap.series[k]] == [p[2] for p in stored[k]]
                assert [p[2] for p in stored[k]] == pytest.approx(alone["series"][k], abs=1e-3)
            assert snap.summary["student_params"] == alone["summary"]["student_params"]
    finally:
        eng.shutdown()


def test_a_member_stops_or_pauses_alone_and_continues_as_a_run_alone(runs_dir, tiny_cfg):
    """Stopped after its first epoch, paused after its second, paused after its third and then
    stopped: each leaves alone; the first paused one resumes alone from its checkpoint and ends
    where a run alone ends; Continue works for the stopped one."""
    eng = Engine(store=Store(runs_dir), max_workers=1, batch_window_s=WINDOW)
    cfgs = [_cfg(tiny_cfg, 12, **{"method.params.T": t}) for t in (2.0, 4.0, 8.0)]
    try:
        ids = [eng.submit(c, owner=o) for c, o in zip(cfgs, ("ann", "bob", "cat"))]
        for rid, (verb, at_epoch) in zip(ids, (("stop", 1), ("pause", 2), ("pause", 3))):
            def on_event(ev, rid=rid, verb=verb, at_epoch=at_epoch):
                if isinstance(ev, Metrics) and ev.epoch == at_epoch and "test_acc" in ev.values:
                    getattr(eng, verb)(rid)
            eng.subscribe(rid, on_event)
        assert eng.wait_for(ids[2], "paused", 120), eng.snapshot(ids[2]).error
        assert eng.wait(ids[0], 30) == "stopped"
        assert eng.wait_for(ids[1], "paused", 30)
        eng.stop(ids[2])
        assert eng.status(ids[2]) == "stopped" == eng.store.get_run(ids[2])["status"]
        assert read_run_checkpoint(eng.store.checkpoint_path(ids[2])).epoch == 3
        assert len(eng.snapshot(ids[0]).series["test_acc"]) == 1
        assert read_run_checkpoint(eng.store.checkpoint_path(ids[1])).epoch == 2
        assert any("left its group" in n for n in eng.snapshot(ids[1]).notices)
        eng.resume(ids[1])
        assert eng.wait(ids[1], 120) == "done", eng.snapshot(ids[1]).error
        snap = eng.snapshot(ids[1])
        assert [p[1] for p in snap.series["test_acc"]] == [float(e) for e in range(1, 13)]
        assert "stacked" not in snap.summary         # it finished alone
        alone = _solo(cfgs[1])
        _same_checkpoint(read_run_checkpoint(eng.store.checkpoint_path(ids[1])), alone["checkpoint"])
        assert eng.resume_run(ids[0]) == ids[0]
        assert eng.wait(ids[0], 120) == "done"
    finally:
        eng.shutdown()


def test_a_cohort_in_a_worker_process(runs_dir, tiny_cfg):
    """The same through a worker process: events keyed by member, one stopped, one done."""
    eng = Engine(store=Store(runs_dir), max_workers=1, processes=True, slots=2,
                 batch_window_s=WINDOW)
    try:
        assert eng.wait_ready(120)
        ids = [eng.submit(_cfg(tiny_cfg, 12, **{"method.params.T": t}), owner=o)
               for t, o in ((2.0, "ann"), (4.0, "bob"))]

        def on_event(ev):
            if isinstance(ev, Metrics) and "test_acc" in ev.values:
                eng.stop(ids[0])
        eng.subscribe(ids[0], on_event)
        assert eng.wait(ids[1], 120) == "done", eng.snapshot(ids[1]).error
        assert eng.wait(ids[0], 30) == "stopped"
        for rid in ids:
            snap = eng.snapshot(rid)
            assert any("together with 1 other run " in n for n in snap.notices)
            assert eng.store.checkpoint_path(rid).exists()
        assert len(eng.snapshot(ids[1]).series["test_acc"]) == 12
    finally:
        eng.shutdown()


def test_a_member_whose_loss_goes_bad_fails_alone(tiny_cfg, monkeypatch):
    """Student 1's KD term turns NaN in epoch 3: it fails with the message a run alone gives, its
    last checkpoint that of epoch 2; student 0 trains on to the end."""
    from kdengine.core.registry import get_method_class
    hinton = get_method_class("hinton")
    loss_terms = hinton.loss_terms
    spe = []

    def poisoned(self, batch, step):
        terms = loss_terms(self, batch, step)
        spe[:] = [self.ctx.steps_per_epoch]
        if step == 2 * spe[0] + 3:
            terms["kd"] = terms["kd"] * torch.tensor([1.0, float("nan")])
        return terms
    monkeypatch.setattr(hinton, "loss_terms", poisoned)
    cfgs = [_cfg(tiny_cfg, 4, **{"method.params.T": t}) for t in (2.0, 4.0)]
    unit = Unit("g", [RunTicket(f"m{i}", cfg.to_dict()) for i, cfg in enumerate(cfgs)])
    events: dict[str, list] = {"m0": [], "m1": []}
    train_unit(unit, {"m0": Control(), "m1": Control()}, lambda rid, ev: events[rid].append(ev))
    ends = {rid: [e for e in evs if isinstance(e, Ended)] for rid, evs in events.items()}
    assert [e.status for e in ends["m0"]] == ["done"] and ends["m0"][0].summary["stacked"] == 2
    assert [e.status for e in ends["m1"]] == ["failed"]
    assert ends["m1"][0].error.startswith(f"loss term 'kd' became nan at step {2 * spe[0] + 4} "
                                          f"(epoch 3)")
    last = {rid: RunCheckpoint.from_bytes([e for e in evs if isinstance(e, Checkpoint)][-1].data)
            for rid, evs in events.items()}
    assert last["m1"].epoch == 2 and last["m0"].epoch == 4
