"""Figures for the Sweeps and TA-gap pages (plain data in, plotly figures out; no engine access)."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from ui.charts import BASELINE, PALETTE, STUDENT, TEACHER, style
from ui.words import knob_label, metric_name

VIA_TA = "#54A24B"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def sweep_reference(rows: list[dict], metric: str) -> float | None:
    """The student-alone test accuracy the cells were run with (``train.baseline``), when the
    metric is test accuracy: the number every cell should be read against."""
    if metric != "final_test_acc":
        return None
    vals = [r["baseline_test_acc"] for r in rows if isinstance(r.get("baseline_test_acc"), float)
            and math.isfinite(r["baseline_test_acc"])]
    return sum(vals) / len(vals) if vals else None


def heatmap_figure(rows: list[dict], x_key: str, y_key: str, metric: str,
                   x_values: list, y_values: list) -> go.Figure:
    """Metric over the grid; cells not finished yet are blank and say their status on hover.

    With a student-alone reference (``sweep_reference``) the colour is the difference to it, on a
    diverging scale centred on 0: a cell that beats the student alone is blue, one that falls
    short red, whatever the spread of the grid (a 4-point range no longer fills the whole scale)."""
    ref = sweep_reference(rows, metric)
    z, text, custom = [], [], []
    index = {(r.get(x_key), r.get(y_key)): r for r in rows}
    for yv in y_values:
        zr, tr, cr = [], [], []
        for xv in x_values:
            r = index.get((xv, yv), {})
            val = r.get(metric)
            ok = isinstance(val, (int, float)) and math.isfinite(val) and (
                r.get("status") == "done" or r.get("live"))
            zr.append((100 * (val - ref) if ref is not None else val) if ok else None)
            label = _fmt(val) + (f"<br>{100 * (val - ref):+.1f}" if ref is not None else "")
            tr.append((label + (" …" if r.get("live") else "")) if ok else r.get("status", ""))
            cr.append([r.get("run_id") or "", r.get("status", "pending"),
                       "reused" if r.get("reused") else "trained",
                       _fmt(r.get("final_agreement", "")), _fmt(r.get("teacher_test_acc", ""))])
        z.append(zr)
        text.append(tr)
        custom.append(cr)
    xs, ys = [_fmt(v) for v in x_values], [_fmt(v) for v in y_values]
    name = metric_name(metric)
    if ref is None:
        scale = {"colorscale": "Viridis", "colorbar": {"title": {"text": name}}}
    else:
        scale = {"colorscale": "RdBu", "zmid": 0.0,
                 "colorbar": {"title": {"text": f"points vs student alone ({ref:.1%})"}}}
    fig = go.Figure(go.Heatmap(x=xs, y=ys, z=z, text=text, texttemplate="%{text}", customdata=custom,
                               hoverinfo="skip", **scale))
    # Streamlit selects points of scatter traces, not heatmap cells: an invisible marker on each
    # cell carries the hover text and makes a click select that cell's run.
    cells = [(xv, yv, text[i][j], custom[i][j]) for i, yv in enumerate(ys) for j, xv in enumerate(xs)]
    fig.add_trace(go.Scatter(
        x=[c[0] for c in cells], y=[c[1] for c in cells], mode="markers", name="cells",
        showlegend=False, marker={"symbol": "square", "size": 60, "opacity": 0.01, "color": "#000"},
        customdata=[[*c[3], c[2]] for c in cells],
        hovertemplate=(f"{knob_label(x_key)} = %{{x}}<br>{knob_label(y_key)} = %{{y}}<br>{name} = "
                       "%{customdata[5]}<br>run %{customdata[0]} (%{customdata[1]}, "
                       "%{customdata[2]})<br>agreement %{customdata[3]}<br>teacher acc "
                       "%{customdata[4]}<br>click to open the run<extra></extra>")))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    title = f"{name} over {knob_label(x_key)} × {knob_label(y_key)}"
    if ref is not None:
        title += f" (colour: difference to the student alone, {ref:.1%})"
    fig = style(fig, title, knob_label(x_key), knob_label(y_key), height=380)
    fig.update_layout(hovermode="closest")
    return fig


def knob_lines_figure(rows: list[dict], knob: str, other: str | None, metric: str,
                      values: list, other_values: list) -> go.Figure:
    """Metric against one knob, one line per value of the other knob."""
    fig = go.Figure()
    groups = other_values if other else [None]
    for i, ov in enumerate(groups):
        pts = [(v, r.get(metric)) for v in values for r in rows
               if r.get(knob) == v and (other is None or r.get(other) == ov)
               and r.get("status") == "done" and isinstance(r.get(metric), (int, float))]
        name = f"{knob_label(other)} = {_fmt(ov)}" if other else metric_name(metric)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name,
                                 mode="lines+markers", line={"color": PALETTE[i % len(PALETTE)]}))
    return style(fig, f"{metric_name(metric)} against {knob_label(knob)}", knob_label(knob),
                 metric_name(metric))


def _band(fig: go.Figure, x: list, mean: list, sd: list, color: str, name: str) -> None:
    pts = [(a, m, s or 0.0) for a, m, s in zip(x, mean, sd) if m is not None]
    if len(pts) < 1:
        return
    xs = [p[0] for p in pts]
    hi = [p[1] + p[2] for p in pts]
    lo = [p[1] - p[2] for p in pts]
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=color,
                             opacity=0.12, mode="lines", line={"width": 0}, hoverinfo="skip",
                             showlegend=False, name=f"{name} ± sd"))


def ta_gap_figure(results: dict) -> go.Figure:
    """Student accuracy against teacher size: direct KD, via the TA, and the student alone."""
    curves = results["curves"]
    x = [c["teacher_params"] for c in curves]
    fig = go.Figure()
    lines = (("alone", "student alone", BASELINE, "dot"), ("direct", "direct KD", TEACHER, "solid"),
             ("via_ta", "via TA", VIA_TA, "solid"))
    for key, label, color, dash in lines:
        mean = [c[key] for c in curves]
        sd = [c[f"{key}_sd"] for c in curves]
        _band(fig, x, mean, sd, color, label)
        pts = [(a, m, s, c) for a, m, s, c in zip(x, mean, sd, curves) if m is not None]
        # The TA's name goes under the x axis (tick text) and into the hover, never onto the plot,
        # where the labels overlapped the lines.
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=label, mode="lines+markers",
            line={"color": color, "dash": dash, "width": 2},
            customdata=[[p[3]["teacher"], p[2] or 0.0, p[3].get("ta") or "—"] for p in pts],
            hovertemplate=(f"{label}<br>teacher %{{customdata[0]}} (%{{x}} params)"
                           + ("<br>TA %{customdata[2]}" if key == "via_ta" else "")
                           + "<br>student acc %{y:.2%} ± %{customdata[1]:.2%}<extra></extra>")))
    fig = style(fig, f"Student {results['student']}: test accuracy against teacher size "
                       f"(mean ± sd over seeds)", "teacher (parameters, log scale)",
                  "student test accuracy", height=380, y_percent=True)
    fig.update_xaxes(type="log", tickvals=x,
                     ticktext=[f"{c['teacher']}<br>{c['teacher_params']:,}"
                               + (f"<br>TA {c['ta']}" if c.get("ta") else "") for c in curves])
    fig.update_layout(hovermode="closest")
    return fig


def ladder_figure(results: dict) -> go.Figure:
    """The ladder's own (scratch) accuracies against size, the TA picks marked. Each size is named
    above and left of its point, off the rising line (below right, the names sat on the line and ran
    off the plot's edge)."""
    rows = results["ladder"]
    pts = [r for r in rows if r["scratch_acc"] is not None]
    colors = [VIA_TA if r["role"] == "TA pick" else (STUDENT if r["role"] == "student" else
                                                     TEACHER) for r in pts]
    fig = go.Figure(go.Scatter(
        x=[r["params"] for r in pts], y=[r["scratch_acc"] for r in pts], mode="lines+markers+text",
        text=[r["size"] for r in pts], textposition="top left", cliponaxis=False,
        marker={"color": colors, "size": 10},
        error_y={"type": "data", "array": [r["scratch_sd"] or 0 for r in pts]},
        line={"color": BASELINE}, name="from scratch"))
    fig = style(fig, "The ladder trained from scratch", "parameters (log scale)", "test accuracy",
                y_percent=True)
    if pts:     # room on the left for the first name, above for the last
        lo, hi = math.log10(min(r["params"] for r in pts)), math.log10(max(r["params"] for r in pts))
        fig.update_xaxes(range=[lo - 0.1 - 0.2 * (hi - lo), hi + 0.05 * (hi - lo) + 0.05])
        fig.update_layout(margin={"t": 60})
    fig.update_xaxes(type="log")
    return fig
