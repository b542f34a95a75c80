"""The class board's picture: each run of a lesson at (its knob value, its test accuracy), the class
mean with its spread per value, and the student-alone level (:mod:`kdengine.teaching.board`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ui.charts import BASELINE, STUDENT, TEACHER, style
from ui.words import knob_label as _label

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from kdengine.teaching.board import LessonBoard

MEAN = "#444444"


def knob_label(knob: str | None) -> str:
    """'method.params.T' -> 'temperature T' (the words students see); "run" without a knob."""
    return _label(knob) if knob else "run"


def _x(v: Any) -> Any:
    if isinstance(v, bool):
        return "on" if v else "off"
    return "none" if v is None else v


def board_figure(board: LessonBoard, me: str | None = None, names: bool = True) -> go.Figure:
    """One picture of a lesson's class: a dot per run (hollow while it trains), the class mean
    ± one standard deviation per knob value, the student-alone level. ``me``: this owner's runs are
    drawn apart ("your runs"); ``names``: hovering a dot names its student (the instructor's
    view; students see their own runs only)."""
    import plotly.graph_objects as go
    fig = go.Figure()
    label = knob_label(board.knob)
    # the mean first: the students' dots are drawn over it
    if board.spreads:
        fig.add_trace(go.Scatter(
            x=[_x(s.x) for s in board.spreads], y=[s.mean for s in board.spreads],
            error_y={"type": "data", "array": [s.std or 0.0 for s in board.spreads],
                     "visible": True, "color": MEAN},
            mode="lines+markers", name="class mean ± 1 sd", line={"color": MEAN, "width": 2},
            marker={"size": 7, "symbol": "diamond"},
            text=[f"{s.n} run(s)" for s in board.spreads],
            hovertemplate=f"{label} = %{{x}}<br>mean %{{y:.1%}} over %{{text}}<extra></extra>"))
    groups = [("finished runs", lambda p: p.state == "done", STUDENT, "circle"),
              ("still training (latest epoch)", lambda p: p.state in ("running", "queued"),
               STUDENT, "circle-open"),
              ("your runs", None, TEACHER, "star")]
    for name, keep, color, symbol in groups:
        pts = [p for p in board.points if p.acc is not None
               and ((p.owner == me) if keep is None else (keep(p) and p.owner != me))]
        if not pts:
            continue
        text = ["you" if p.owner == me else p.student if names else "a classmate" for p in pts]
        fig.add_trace(go.Scatter(
            x=[_x(p.x) for p in pts], y=[p.acc for p in pts], mode="markers", name=name,
            text=text, marker={"color": color, "size": 10, "symbol": symbol, "opacity": 0.75},
            hovertemplate=f"%{{text}}<br>{label} = %{{x}}<br>test accuracy %{{y:.1%}}<extra></extra>"))
    if board.alone is not None:
        fig.add_hline(y=board.alone, line={"color": BASELINE, "dash": "dot", "width": 2},
                      annotation_text=f"student alone {board.alone:.1%}",
                      annotation_position="bottom right", annotation_font_color=BASELINE)
    style(fig, f"test accuracy against {label}", label, "test accuracy (%)", height=380,
          y_percent=True)
    fig.update_layout(hovermode="closest")
    return fig
