"""The sweep heatmap reads cells against the student alone when the runs carry that reference."""
from __future__ import annotations

import math

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


def test_labels_sit_off_the_plotting_area_where_they_hid_the_curves():
    """The accuracy chart's teacher and student-alone levels and the TA-gap chart's names are in the
    legend and the axis ticks, outside the plot; the legend hangs from the figure's bottom edge,
    under the x axis title. (On the plot, the level labels covered the end of the student's
    curve: lesson 6's answer.)"""
    import plotly.graph_objects as go
    from ui.charts import accuracy_figure
    from ui.sweep_charts import ladder_figure, ta_gap_figure
    series = {"test_acc": [(i, i + 1, 0.5 + 0.02 * i) for i in range(15)]}
    acc = accuracy_figure(series, {"teacher_test_acc": 0.978, "baseline_test_acc": 0.887})
    curve = {"teacher": "MLP 1x64", "teacher_params": 5000, "ta": "MLP 1x16", "alone": 0.3,
             "direct": 0.35, "via_ta": 0.36, "alone_sd": 0.01, "direct_sd": 0.01, "via_ta_sd": 0.01}
    ladder = [{"size": f"MLP 1x{w}", "params": 100 * w, "scratch_acc": 0.3 + w / 100,
               "scratch_sd": 0.01, "role": ""} for w in (8, 16, 64)]
    ta = ta_gap_figure({"student": "MLP 1x8", "curves": [curve], "ladder": ladder})
    for fig in (go.Figure(acc), ta):
        layout = fig.layout
        assert not layout.annotations                           # nothing written on the plot
        assert (layout.legend.yref, layout.legend.y, layout.legend.yanchor) == ("container", 0, "bottom")
    names = {t.name for t in go.Figure(acc).data}
    assert {"teacher 97.8%", "student alone 88.7%"} <= names   # the levels, in the legend
    assert "TA MLP 1x16" in " ".join(ta.layout.xaxis.ticktext)
    # the ladder's names sit above-left of a rising line, inside a padded x range
    lad = ladder_figure({"ladder": ladder})
    assert lad.data[0].textposition == "top left" and lad.data[0].cliponaxis is False
    lo, hi = lad.layout.xaxis.range
    assert lo < math.log10(800) and hi > math.log10(6400)
