"""Charts for the omitted-class lesson (app_pages/dark_knowledge.py): per-class accuracy before and after
the bias shift, and accuracy against the shift."""
from __future__ import annotations

import plotly.graph_objects as go

from ui.charts import BASELINE, STUDENT, TEACHER, style


def per_class_figure(class_names: list[str], acc0: list[float], acc_s: list[float], shift: float,
                     omitted: int) -> go.Figure:
    colors = [TEACHER if i == omitted else STUDENT for i in range(len(class_names))]
    fig = go.Figure([
        go.Bar(x=class_names, y=acc0, name="no shift", marker_color=BASELINE),
        go.Bar(x=class_names, y=acc_s, name=f"bias of class {class_names[omitted]} + {shift:g}",
               marker_color=colors)])
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.02])
    return style(fig, "Test accuracy per class", "class", "accuracy", height=300, y_percent=True)


def shift_curve_figure(curve: list[dict], shift: float, omitted_name: str) -> go.Figure:
    xs = [r["shift"] for r in curve]
    fig = go.Figure([
        go.Scatter(x=xs, y=[r["acc"] for r in curve], name="all classes", mode="lines",
                   line={"color": STUDENT, "width": 2}),
        go.Scatter(x=xs, y=[r["class_acc"] for r in curve], name=f"class {omitted_name}",
                   mode="lines", line={"color": TEACHER, "width": 2})])
    fig.add_vline(x=shift, line={"color": "#444444", "dash": "dot"})
    return style(fig, "Accuracy against the bias shift", f"shift added to class {omitted_name}'s "
                   "logit", "test accuracy", height=300, y_percent=True)
