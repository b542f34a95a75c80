"""The "student alone" baseline: trained after the distilled student (whose live curve never waits
for it), cached on what determines it, and reported in the run's own epochs."""
from __future__ import annotations

import re

from kdengine.core.events import Metrics, Notice, Phase
from kdengine.data.datasets import load_data
from kdengine.run.trainer import Trainer
from kdengine.teachers.student_alone import baseline_key, baseline_plan


def _run(cfg) -> list[dict]:
    events: list[dict] = []
    Trainer(cfg, emit=events.append).run()
    return events


def _first(events, pred) -> int:
    return next(i for i, e in enumerate(events) if pred(e))


def test_student_curve_comes_before_the_baseline_which_speaks_in_user_epochs(tiny_cfg, runs_dir):
    # 50 labels: the baseline makes many passes over them to match the student's steps
    cfg = tiny_cfg.with_overrides({"data.transfer": "labels", "data.n_labels": 50,
                                   "train.baseline": True, "train.epochs": 3})
    plan = baseline_plan(cfg, load_data(cfg.data))
    assert plan["epochs"] > cfg.train.epochs                # passes over the 50 labels
    events = _run(cfg)
    student_point = _first(events, lambda e: isinstance(e, Metrics) and "loss/total" in e.values)
    baseline = [e for e in events if isinstance(e, Phase) and e.phase == "baseline"]
    assert baseline, "the baseline was trained"
    assert student_point < events.index(baseline[0])
    for e in baseline:
        m = re.search(r"epoch (\d+) of (\d+)$", e.message)
        assert m and int(m.group(2)) == 3 and int(m.group(1)) <= 3, e.message
    assert baseline[-1].message.endswith("epoch 3 of 3")
    acc = [e for e in events if isinstance(e, Metrics) and "baseline_test_acc" in e.values]
    assert len(acc) == 1 and 0 <= acc[0].values["baseline_test_acc"] <= 1

    # The same steps again (the run's optimiser does not matter: the baseline uses Adam): cached.
    again = _run(cfg.with_overrides({"train.optimizer": "sgd"}))
    assert not [e for e in again if isinstance(e, Phase) and e.phase == "baseline"]
    assert any(isinstance(e, Notice) and "Student alone (cached)" in e.message for e in again)


def test_baseline_key_follows_what_determines_it(tiny_cfg):
    data = load_data(tiny_cfg.data)
    plan = baseline_plan(tiny_cfg, data)
    key = baseline_key(tiny_cfg, plan)
    assert baseline_key(tiny_cfg.with_overrides({"method.params.T": 8.0}), plan) == key
    assert baseline_key(tiny_cfg.with_overrides({"train.seed": 1}), plan) != key
    assert baseline_key(tiny_cfg.with_overrides({"student.width": 32}), plan) != key
    longer = tiny_cfg.with_overrides({"train.epochs": 4})
    assert baseline_key(longer, baseline_plan(longer, data)) != key        # more steps
