"""Method-view figures show what they are about: the confusions off the diagonal, every arrow."""
from __future__ import annotations

import math

from ui.method_figs import FLOOR, sobolev_field_figure, specialists_figure


def test_confusions_are_on_a_log_scale_without_the_diagonal():
    conf = [[0.97, 0.02, 0.01], [0.001, 0.99, 0.009], [0.0, 0.05, 0.95]]
    heat = specialists_figure({"class_names": ["a", "b", "c"], "clusters": [[0, 1]],
                               "soft_confusion": conf}).data[0]
    assert all(heat.z[i][i] is None for i in range(3))
    assert math.isclose(heat.z[0][1], math.log10(0.02))
    assert heat.z[2][0] == math.log10(FLOOR)                # a zero sits at the floor, not -inf
    assert heat.zmin == math.log10(FLOOR) and heat.zmax == 0


def test_one_steep_point_does_not_shrink_every_other_arrow():
    n = 5
    xs = ys = [float(i) for i in range(n)]
    grads = [[(1.0, 0.0)] for _ in range(n * n)]
    grads[12] = [(1000.0, 0.0)]                              # the boundary: very steep
    field = {"xs": xs, "ys": ys,
             "teacher": {"logits": [[0.0]] * (n * n), "grads": grads},
             "student": {"logits": [[0.0]] * (n * n), "grads": grads}}
    fig = sobolev_field_figure(field, 0, "class 0")
    ax = list(fig.data[1].x)
    lengths = [ax[3 * k + 1] - ax[3 * k] for k in range(n * n)]
    assert min(lengths) > 0.5                                # a typical arrow spans ~ one cell
    assert max(lengths) <= 1.5 + 1e-9                        # the steep one is clipped
