"""Figures for methods that have more to show than loss curves (no streamlit import: testable).

* Sobolev (Czarnecki et al. 2017): a model's logit for one class over the 2-D input plane, with its
  input-gradient field drawn as short arrows; teacher and student side by side.
* Specialists (Hinton et al. 2015 s.5): the generalist's confusion matrix with the classes reordered
  so each specialist's subset is a contiguous block, outlined.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.charts import STUDENT, TEACHER, style


def _arrows(xs: list[float], ys: list[float], grads: list, c: int, scale: float,
            longest: float = math.inf) -> tuple[list, list]:
    """One scatter path with None gaps: a segment from each grid point along d logit_c / dx, at
    most ``longest`` long."""
    ax, ay = [], []
    n = len(xs)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            gx, gy = grads[i * n + j][c]
            shrink = min(1.0, longest / max(scale * math.hypot(gx, gy), 1e-12))
            gx, gy = gx * shrink, gy * shrink
            ax += [x, x + scale * gx, None]
            ay += [y, y + scale * gy, None]
    return ax, ay


def sobolev_field_figure(field: dict, c: int, class_name: str) -> go.Figure:
    """Teacher and student logit_c over the grid (colour) with their gradient fields (arrows)."""
    xs, ys, n = field["xs"], field["ys"], len(field["xs"])
    spacing = (xs[-1] - xs[0]) / max(1, n - 1)
    # Scale by a high percentile, not the maximum: one steep point (the teacher's boundary is
    # sharp) would otherwise shrink every other arrow to nothing. Longer arrows are clipped.
    lengths = sorted(math.hypot(*pt[c]) for who in ("teacher", "student")
                     for pt in field[who]["grads"])
    typical = lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0.0
    scale = 0.9 * spacing / (typical or 1.0)   # a 90th-percentile arrow spans about one grid cell
    fig = make_subplots(1, 2, subplot_titles=("teacher", "student"), shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, (who, colour) in enumerate((("teacher", TEACHER), ("student", STUDENT)), start=1):
        z = [[field[who]["logits"][i * n + j][c] for j in range(n)] for i in range(n)]
        fig.add_trace(go.Heatmap(x=xs, y=ys, z=z, coloraxis="coloraxis",
                                 hovertemplate="x₁ %{x:.2f}<br>x₂ %{y:.2f}<br>logit %{z:.2f}"
                                               "<extra>" + who + "</extra>"), 1, col)
        ax, ay = _arrows(xs, ys, field[who]["grads"], c, scale, longest=1.5 * spacing)
        fig.add_trace(go.Scatter(x=ax, y=ay, mode="lines", line={"color": colour, "width": 1.5},
                                 name=f"{who} ∇ logit", hoverinfo="skip"), 1, col)
        fig.update_xaxes(title_text="x₁ (standardised)", row=1, col=col)
    fig.update_yaxes(title_text="x₂ (standardised)", row=1, col=1)
    fig.update_layout(coloraxis={"colorscale": "RdBu", "reversescale": True,
                                 "colorbar": {"title": {"text": "logit"}}})
    return style(fig, f"logit of {class_name} and its input gradient", "", "", height=420)


FLOOR = 1e-4        # smallest probability the confusion colour scale shows


def specialists_figure(art: dict) -> go.Figure:
    """Soft confusion matrix, classes reordered by cluster, each specialist's block outlined; off
    the diagonal only, on a log scale."""
    names, conf, clusters = art["class_names"], art["soft_confusion"], art["clusters"]
    order = [c for sub in clusters for c in sub]
    order += [c for c in range(len(names)) if c not in order]
    labels = [names[c] for c in order]
    # Log scale, diagonal left blank: the right answers (p near 1) would otherwise take the whole
    # linear scale and hide the confusions (p of 0.001 to 0.1) that define the specialists.
    z = [[math.log10(max(conf[r][c], FLOOR)) if r != c else None for c in order] for r in order]
    p = [[conf[r][c] for c in order] for r in order]
    ticks = list(range(round(math.log10(FLOOR)), 1))
    fig = go.Figure(go.Heatmap(x=labels, y=labels, z=z, customdata=p, colorscale="Blues",
                               zmin=math.log10(FLOOR), zmax=0,
                               colorbar={"title": {"text": "mean p (log)"}, "tickvals": ticks,
                                         "ticktext": [f"{10.0 ** t:g}" for t in ticks]},
                               hovertemplate="true %{y} → predicted %{x}: %{customdata:.4f}"
                                             "<extra></extra>"))
    start = 0
    for m, sub in enumerate(clusters):
        lo, hi = start - 0.5, start + len(sub) - 0.5
        fig.add_shape(type="rect", x0=lo, x1=hi, y0=lo, y1=hi, line={"color": TEACHER, "width": 3})
        fig.add_annotation(x=hi, y=lo, text=f"specialist {m + 1}", showarrow=False,
                           xanchor="right", yanchor="bottom", font={"color": TEACHER})
        start += len(sub)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return style(fig, "generalist's confusions (soft), grouped by specialist", "predicted class",
                 "true class", height=460)
