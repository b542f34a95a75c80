"""The omitted-class lesson: per-class accuracy, the evaluation-time bias shift, the trainer's
``omitted_class_acc`` metric, the preset and the Dark knowledge page."""
from __future__ import annotations

import math

import pytest
import torch

from kdengine import RunConfig
from kdengine.analysis.dark_knowledge import (best_shift, bias_curve, omitted_report, omitted_runs,
                              per_class_accuracy, run_test_logits, shift_bias)


def test_per_class_accuracy_and_report_on_known_logits():
    # 3 classes; rows: true 0 (right), true 1 (wrong, says 0), true 2 (right), true 1 (right)
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 1, 2, 1])
    assert per_class_accuracy(logits, y) == [1.0, 0.5, 1.0]
    assert math.isnan(per_class_accuracy(logits[:1], y[:1], 3)[1])      # no sample of class 1
    r0 = omitted_report(logits, y, cls=1, shift=0.0)
    assert (r0["errors"], r0["class_errors"], r0["n_class"], r0["acc"]) == (1, 1, 2, 0.75)
    r1 = omitted_report(logits, y, cls=1, shift=0.6)     # 0.5 + 0.6 > 1.0: the miss is fixed
    assert (r1["errors"], r1["class_acc"], r1["false_class"]) == (0, 1.0, 0)
    r2 = omitted_report(logits, y, cls=1, shift=1.5)     # now row 2 (true 2) is called 1
    assert (r2["class_errors"], r2["false_class"]) == (0, 1)
    assert torch.equal(shift_bias(logits, 1, 0.6)[:, [0, 2]], logits[:, [0, 2]])
    assert best_shift(logits, y, 1, [0.0, 0.6, 2.5]) == 0.6


def test_raising_the_bias_only_ever_adds_predictions_of_that_class():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g) * 3
    y = torch.randint(0, 10, (300,), generator=g)
    curve = bias_curve(logits, y, 3, [x / 2 for x in range(-4, 61)])
    acc3 = [r["class_acc"] for r in curve]
    false3 = [r["false_class"] for r in curve]
    assert acc3 == sorted(acc3) and false3 == sorted(false3)
    assert curve[-1]["class_acc"] == 1.0


def test_omit_3_run_end_to_end(runs_dir):
    from kdengine.data.datasets import load_data
    from kdengine import Engine
    cfg = RunConfig.from_dict({
        "data": {"name": "digits", "omit_class": 3},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 64},
                    "epochs": 5},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": "hinton", "params": {"T": 8.0}},
        "train": {"epochs": 2, "lr": 0.003, "log_every": 5}})
    assert not (load_data(cfg.data).transfer.y == 3).any()
    eng = Engine(max_workers=1)
    try:
        rid = eng.submit(cfg, owner="t")
        assert eng.wait(rid, timeout=120) == "done", eng.snapshot(rid).error
        snap = eng.snapshot(rid)
        listed = eng.list_runs()
    finally:
        eng.shutdown()
    metric = snap.series["omitted_class_acc"]
    assert len(metric) == 2 and 0.0 <= metric[-1][2] <= 1.0
    d = run_test_logits(rid)
    assert d["omit_class"] == 3 and d["logits"].shape == (len(d["y"]), 10)
    rep = omitted_report(d["logits"], d["y"], 3)
    # the rebuilt student is the trained one: same numbers as the run's last evaluation
    assert abs(rep["class_acc"] - metric[-1][2]) < 1e-6
    assert abs(rep["acc"] - snap.summary["final_test_acc"]) < 1e-6
    assert omitted_report(d["logits"], d["y"], 3, shift=100.0)["class_acc"] == 1.0
    assert [r.run_id for r in omitted_runs(listed)] == [rid]

    # the Dark knowledge page shows this run; a large shift puts every 3 right
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file("../app_pages/dark_knowledge.py", default_timeout=60).run()
    assert not at.exception
    # The shift moves in the browser: the figure carries one frame per shift, numbers filled in.
    import json
    fig = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if json.loads(c.proto.spec).get("frames"))
    shifts = [x / 4 for x in range(-8, 41)]
    assert [f["name"] for f in fig["frames"]] == [f"{s:g}" for s in shifts]
    steps = fig["layout"]["sliders"][0]["steps"]
    assert [s["args"][0] for s in steps] == [[f["name"]] for f in fig["frames"]]
    assert shifts[fig["layout"]["sliders"][0]["active"]] == 0.0
    assert f"accuracy on class 3 {rep['class_acc']:.2%}" in fig["layout"]["annotations"][0]["text"]
    curve = bias_curve(d["logits"], d["y"], 3, shifts)
    for frame, r in zip(fig["frames"], curve):
        assert frame["data"][1]["y"] == pytest.approx(r["per_class_acc"], nan_ok=True)
        assert frame["data"][2]["x"] == [r["shift"]] * 2
        assert f"accuracy on class 3 {r['class_acc']:.2%}" in frame["layout"]["annotations"][0]["text"]
    assert "accuracy on class 3 100.00%" in fig["frames"][-1]["layout"]["annotations"][0]["text"]


def test_preset_is_hintons_omitted_three():
    from kdengine.cli import load_config
    cfg = load_config("digits-omit-3")
    assert cfg.data.omit_class == 3 and cfg.data.name == "digits"
    assert cfg.method.name == "hinton"


def test_dark_knowledge_page_without_runs(runs_dir):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file("../app_pages/dark_knowledge.py", default_timeout=60).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)     # nothing to show: offers the preset
    assert any("digits-omit-3" in b.label for b in at.button)
