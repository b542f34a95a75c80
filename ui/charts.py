"""Plotly chart builders with axis titles and units, and one colour per role everywhere:
teacher orange, student blue, "student alone" grey. ``live_panel`` draws a run snapshot: one chart
per ``loss/*`` term, accuracy (with teacher and student-alone reference lines), agreement and KL.
"""
from __future__ import annotations

import functools
import zlib
from typing import TYPE_CHECKING, Iterable

import streamlit as st

if TYPE_CHECKING:          # plotly.graph_objects is slow to import: only where a Figure is built
    import plotly.graph_objects as go

    from kdengine import RunSnapshot

TEACHER = "#F58518"
STUDENT = "#4C78A8"
BASELINE = "#8C8C8C"
TERM_COLORS = {"ce": "#54A24B", "kd": "#B279A2", "tckd": "#E45756", "nckd": "#72B7B2",
               "total": "#444444"}
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6",
           "#9D755D", "#EECA3B", "#BAB0AC"]
PLOT_CONFIG = {"displayModeBar": False, "responsive": True}
HEIGHT = 260
# Accuracy, agreement and KL: room for the accuracy chart's legend, an entry a row in a narrow
# column (fixed-width entries, two a row, cut the names short there).
ROW_HEIGHT = HEIGHT + 80
# The legend sits under the whole figure (its container), below the x axis title: placed in the
# plot's own coordinates it overlapped the axis title whenever a narrow column wrapped it.
LEGEND = {"orientation": "h", "xref": "container", "x": 0, "yref": "container", "y": 0,
          "yanchor": "bottom"}


def term_color(term: str) -> str:
    """A fixed colour per loss-term name (known names fixed, others stable by hash)."""
    return TERM_COLORS.get(term) or PALETTE[zlib.crc32(term.encode()) % len(PALETTE)]


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = HEIGHT,
            y_percent: bool = False) -> go.Figure:
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend=LEGEND,
                      xaxis_title=x_title, yaxis_title=y_title, hovermode="x unified")
    if y_percent:
        fig.update_yaxes(tickformat=".0%")
    return fig


def xy(series: dict, name: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric from a snapshot's ``series`` (name -> [(step, epoch, v)])."""
    pts = [(e, v) for _, e, v in series.get(name, []) if v is not None and v == v]
    return [p[0] for p in pts], [p[1] for p in pts]


# The live charts are plain figure dicts, not go.Figure: they are rebuilt every second while a run
# trains, and go.Figure's validation (done again by st.plotly_chart) was much of the refresh cost.
def _line(x, y, name: str, color: str, dash: str = "solid", size: int = 6) -> dict:
    return {"type": "scatter", "x": x, "y": y, "mode": "lines+markers", "name": name,
            "line": {"color": color, "dash": dash, "width": 2}, "marker": {"size": size}}


def _fig(traces: list[dict], title: str, x_title: str, y_title: str, y_percent: bool = False,
         height: int = HEIGHT) -> dict:
    yaxis = {"title": {"text": y_title}}
    if y_percent:
        yaxis["tickformat"] = ".0%"
    return {"data": traces, "layout": {
        "title": {"text": title, "font": {"size": 14}}, "height": height,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "hovermode": "x unified",
        "legend": LEGEND,
        "xaxis": {"title": {"text": x_title}}, "yaxis": yaxis}}


def _ref_line(fig: dict, y: float, label: str, color: str) -> None:
    """A dotted horizontal reference line across the plot, named in the legend (under the plot):
    a label on the plot itself covered the student's curve where it ends, next to these levels,
    and that end is what the lessons ask to read."""
    fig["layout"].setdefault("shapes", []).append({
        "type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
        "line": {"color": color, "dash": "dot", "width": 2}})
    fig["data"].append({"type": "scatter", "x": [None], "y": [None], "mode": "lines",
                        "name": f"{label} {y:.1%}", "hoverinfo": "skip",
                        "line": {"color": color, "dash": "dot", "width": 2}})


def loss_figure(series: dict, name: str) -> dict:
    term = name.split("/", 1)[1]
    x, y = xy(series, name)
    title = "total loss" if term == "total" else f"loss term: {term}"
    return _fig([_line(x, y, term, term_color(term), size=4)], title, "epoch",
                "loss (nats, weighted)")


def accuracy_figure(series: dict, latest: dict | None = None) -> dict:
    """Student train/test accuracy per epoch; teacher and student-alone as reference lines."""
    latest = latest or {}
    traces = [_line(*xy(series, "test_acc"), "student test", STUDENT),
              _line(*xy(series, "train_acc"), "student train", STUDENT, "dash")]
    fig = _fig(traces, "accuracy", "epoch", "accuracy (%)", y_percent=True, height=ROW_HEIGHT)
    t, b = latest.get("teacher_test_acc"), latest.get("baseline_test_acc")
    if t is not None and t == t:
        _ref_line(fig, t, "teacher", TEACHER)
    if b is not None and b == b:
        _ref_line(fig, b, "student alone", BASELINE)
    return fig


def metric_figure(series: dict, name: str, title: str, y_title: str, color: str = STUDENT,
                  y_percent: bool = False, height: int = HEIGHT) -> dict:
    from ui.words import metric_name
    return _fig([_line(*xy(series, name), metric_name(name), color)], title, "epoch", y_title,
                y_percent, height)


def show(fig: go.Figure | dict, key: str | None = None, where=None) -> None:
    if isinstance(fig, dict):
        fig = checked(fig)
    (where or st).plotly_chart(fig, key=key, config=PLOT_CONFIG, width="stretch")


@functools.cache
def _template() -> dict:
    """The layout template that ``st.plotly_chart``'s validation adds to a figure (Streamlit's
    theme, ``plotly.io.templates.default`` once Streamlit is imported), as plain data."""
    import plotly.graph_objects as go
    return go.Figure().to_dict()["layout"]["template"]


def checked(fig: dict) -> go.Figure:
    """This module's figure dict as ``st.plotly_chart`` would send it, without its re-validation
    through ``go.Figure(**d)``: that was most of a live view's rerun (docs/perf.md). The builders
    here use documented plotly properties only; tests/test_ui_live.py checks the spec sent is the
    one validation would give."""
    from ui.boundary_figs import PrebuiltFigure
    return PrebuiltFigure({**fig, "layout": {**fig["layout"], "template": _template()}})


def loss_terms(series: dict) -> list[str]:
    """``loss/*`` names, the method's own terms first and the total last."""
    names = sorted(k for k in series if k.startswith("loss/") and k != "loss/total")
    return names + (["loss/total"] if "loss/total" in series else [])


def live_panel(snap: RunSnapshot, key: str = "live") -> None:
    """Every chart for one run snapshot. Containers carry stable keys (``st-key-<key>_acc`` in the
    page's HTML) so browser tests can find the charts."""
    figs = live_figures(snap, key)
    terms = [n for n in figs if n.startswith("loss/")]
    if terms:
        cols = st.columns(min(3, len(terms)))
        for i, name in enumerate(terms):
            with cols[i % len(cols)].container(key=f"{key}_loss_{name.split('/', 1)[1]}"):
                show(figs[name])
    c1, c2, c3 = st.columns(3)
    with c1.container(key=f"{key}_acc"):
        show(figs["accuracy"])
    if "agreement" in figs:
        with c2.container(key=f"{key}_agreement"):
            show(figs["agreement"])
        with c3.container(key=f"{key}_kl"):
            show(figs["kl_test"])


def live_figures(snap: RunSnapshot, key: str) -> dict[str, go.Figure]:
    """The live panel's figures by name, rebuilt only when a point they plot has changed: most
    reruns of a live view find the same points (a run paused, queued, in its teacher phase, or
    between epochs), and a rerun must draw its charts again all the same. Kept per ``key`` in the
    session."""
    series, latest = snap.series or {}, snap.latest
    terms = loss_terms(series)
    plotted = [*terms, "test_acc", "train_acc", "agreement", "kl_test"]
    # series only grow (a continued run restarts from its own stored points)
    seen = (snap.run_id, tuple(len(series.get(n, ())) for n in plotted), tuple(terms),
            latest.get("teacher_test_acc"), latest.get("baseline_test_acc"))
    memo = st.session_state.get(f"live_figures.{key}")
    if memo is not None and memo[0] == seen:
        return memo[1]
    figs = {name: loss_figure(series, name) for name in terms}
    figs["accuracy"] = accuracy_figure(series, latest)
    if "agreement" in series:
        figs["agreement"] = metric_figure(series, "agreement", "student–teacher agreement",
                                          "same top-1 on test (%)", TEACHER, y_percent=True,
                                          height=ROW_HEIGHT)
        figs["kl_test"] = metric_figure(series, "kl_test", "KL(teacher ‖ student) on test",
                                        "KL (nats, T = 1)", TEACHER, height=ROW_HEIGHT)
    built = {name: checked(fig) for name, fig in figs.items()}
    st.session_state[f"live_figures.{key}"] = (seen, built)
    return built


# -- soft targets ------------------------------------------------------------------------------
def entropy_figure(Ts, H_teacher, H_student, T: float, H_max: float) -> go.Figure:
    import plotly.graph_objects as go
    fig = go.Figure()
    if H_teacher is not None:
        fig.add_trace(go.Scatter(x=list(Ts), y=list(H_teacher), mode="lines", name="teacher",
                                 line={"color": TEACHER, "width": 2}))
    fig.add_trace(go.Scatter(x=list(Ts), y=list(H_student), mode="lines", name="student",
                             line={"color": STUDENT, "width": 2}))
    # Markers as traces, not shapes: on a log axis Plotly places annotations in log10 units.
    lo, hi = float(min(Ts)), float(max(Ts))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[H_max, H_max], mode="lines", name="uniform (log classes)",
                             line={"color": BASELINE, "dash": "dot"}))
    fig.add_trace(go.Scatter(x=[T, T], y=[0, H_max], mode="lines", name=f"T = {T:g}",
                             line={"color": "#444", "dash": "dash"}))
    ticks = [t for t in (0.5, 1, 2, 4, 8, 16) if lo <= t <= hi] + [hi]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return style(fig, "entropy of the softened distribution", "temperature T (log scale)",
                   "entropy (nats)", height=320)


# -- several runs ------------------------------------------------------------------------------
def overlay_figure(curves: Iterable[tuple[str, list, list]], metric: str) -> go.Figure:
    """One line per run for ``metric`` against epoch."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for i, (label, x, y) in enumerate(curves):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label,
                                 line={"color": PALETTE[i % len(PALETTE)], "width": 2},
                                 marker={"size": 4}))
    from ui.words import metric_name
    pct = metric.endswith("_acc") or metric == "agreement"
    unit = "(%)" if pct else ("(nats)" if metric.startswith(("loss/", "kl")) else "")
    name = metric_name(metric)
    return style(fig, f"{name} by run", "epoch", f"{name} {unit}".strip(), height=380,
                 y_percent=pct)
