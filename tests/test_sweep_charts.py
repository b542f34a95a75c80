"""The sweep heatmap reads cells against the student alone when the runs carry that reference."""
from __future__ import annotations

import pytest

from ui.sweep_charts import heatmap_figure, sweep_reference


def _rows(baseline: float | None):
    rows = []
    for i, t in enumerate((1.0, 4.0)):
        for j, w in enumerate((0.5, 1.0)):
            r = {"T": t, "w": w, "status": "done", "final_test_acc": 0.70 + 0.05 * i + 0.01 * j}
            if baseline is not None:
                r["baseline_test_acc"] = baseline
            rows.append(r)
    return rows


def test_colour_is_the_difference_to_the_student_alone_centred_on_zero():
    rows = _rows(0.72)
    assert sweep_reference(rows, "final_test_acc") == 0.72
    assert sweep_reference(rows, "final_agreement") is None      # not an accuracy: no reference
    heat = heatmap_figure(rows, "T", "w", "final_test_acc", [1.0, 4.0], [0.5, 1.0]).data[0]
    assert heat.zmid == 0.0
    # rows are y (w), columns x (T); points above/below 72%
    assert heat.z[0][0] == pytest.approx(-2.0) and heat.z[1][1] == pytest.approx(4.0)
    assert "+4.0" in heat.text[1][1]


def test_without_a_reference_the_metric_itself_is_drawn():
    heat = heatmap_figure(_rows(None), "T", "w", "final_test_acc", [1.0, 4.0], [0.5, 1.0]).data[0]
    assert heat.zmid is None and heat.z[1][1] == pytest.approx(0.76)
