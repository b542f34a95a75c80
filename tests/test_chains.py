"""Teacher-assistant chains and the TA-gap experiment: links run end to end, each link's teacher is
the previous link's trained student, and a TA trained once serves every chain that names it."""
from __future__ import annotations

import pytest
import torch

from kdengine.experiments.chains import link_config, run_chain, run_teacher
from kdengine.core.config import ModelConfig
from kdengine.data.datasets import load_data
from kdengine import ConfigError
from kdengine.experiments.ta_gap import TAGapSpec, pick_ta, start_experiment
from kdengine.teachers.sources import get_teacher

W = lambda w: ModelConfig("mlp", 1, w)  # noqa: E731


def _count_submits(engine):
    calls = []
    real = engine.submit

    def counting(cfg, *a, **kw):
        calls.append(cfg)
        return real(cfg, *a, **kw)
    engine.submit = counting
    return calls


def test_chain_of_three_links_and_ta_reuse(engine, tiny_cfg):
    submits = _count_submits(engine)
    links = run_chain(engine, tiny_cfg, [W(32), W(16), W(8)])
    assert len(links) == 3 and not any(l.reused for l in links) and len(submits) == 3
    store = engine.store
    rows = [store.get_run(l.run_id) for l in links]
    assert all(r["status"] == "done" for r in rows)
    assert rows[0]["config"]["teacher"]["source"] == "train"
    for prev, row in zip(rows, rows[1:]):
        t = row["config"]["teacher"]
        # each link's teacher is the previous link's trained student, loaded from its checkpoint
        assert (t["source"], t["checkpoint"]) == ("run", prev["id"])
        assert t["model"] == prev["config"]["student"]
        assert row["summary"]["teacher_test_acc"] == pytest.approx(prev["summary"]["final_test_acc"])
    assert [r["config"]["student"]["width"] for r in rows] == [32, 16, 8]

    # a second chain through the same two TAs trains only its own new student
    before = len(store.list_runs())
    links2 = run_chain(engine, tiny_cfg, [W(32), W(16), W(4)])
    assert [l.reused for l in links2] == [True, True, False]
    assert [l.run_id for l in links2[:2]] == [l.run_id for l in links[:2]]
    assert len(store.list_runs()) == before + 1 and len(submits) == 4
    assert len(store.runs_by_hash(store.get_run(links[1].run_id)["config_hash"])) == 1
    assert store.get_run(links2[2].run_id)["config"]["teacher"]["checkpoint"] == links[1].run_id


def test_run_teacher_source_checks(runs_dir, tiny_cfg):
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        tiny_cfg.with_overrides({"teacher.source": "run", "teacher.checkpoint": "../etc"})
    cfg = link_config(tiny_cfg, run_teacher("20990101-000000-abcdef", W(16)), W(8))
    data = load_data(cfg.data)
    with pytest.raises(ConfigError, match="no stored run"):
        get_teacher(cfg, data, torch.device("cpu"))


def test_pick_ta_rule():
    acc = {0: 0.60, 1: 0.70, 2: 0.78, 3: 0.85, 4: 0.90}
    assert pick_ta(acc, 0, 4) == 2          # mean 0.75: 0.78 is nearest
    assert pick_ta(acc, 0, 2) == 1
    assert pick_ta(acc, 0, 1) is None       # no size between student and teacher


def test_ta_gap_experiment_runs_and_reuses(engine):
    spec = TAGapSpec(base={"data": {"name": "digits"},
                           "method": {"name": "hinton", "params": {"T": 4.0}},
                           "train": {"epochs": 1, "batch_size": 128, "lr": 0.003, "log_every": 50}},
                     sizes=[W(4).__dict__, W(8).__dict__, W(16).__dict__], seeds=[0])
    exp = start_experiment(engine, spec)
    assert exp.wait(240) == "done", exp.error
    res = exp.results()
    # 3 sizes from scratch + 2 direct KD + 1 TA (for the largest teacher) + 1 student via that TA
    assert len(engine.store.list_runs()) == 7
    assert [r["n"] for r in res["ladder"]] == [1, 1, 1]
    assert exp.picks == {1: None, 2: 1}
    by_teacher = {c["teacher"]: c for c in res["curves"]}
    assert by_teacher["MLP 1x8"]["via_ta"] is None and by_teacher["MLP 1x8"]["direct"] is not None
    assert by_teacher["MLP 1x16"]["ta"] == "MLP 1x8" and by_teacher["MLP 1x16"]["via_ta"] is not None
    assert res["ladder"][0]["params"] < res["ladder"][1]["params"] < res["ladder"][2]["params"]
    assert res["progress"] == 1.0
    via = next(r for r in exp.records if r["role"] == "via_ta")
    ta_row = engine.store.get_run(via["ta_run"])
    assert ta_row["config"]["student"]["width"] == 8 and ta_row["config"]["teacher"]["source"] == "run"
    stored = engine.store.get_sweep(exp.id)
    assert stored["kind"] == "ta_gap" and stored["status"] == "done"
    # the same experiment again trains nothing: every run is found by its config hash
    again = start_experiment(engine, spec)
    assert again.wait(120) == "done"
    assert len(engine.store.list_runs()) == 7
    assert again.results()["curves"] == res["curves"]
