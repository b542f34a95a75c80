"""Charts for the omitted-class lesson (app_pages/dark_knowledge.py): per-class accuracy before and after
the bias shift, and accuracy against the shift, as one figure whose slider moves the shift."""
from __future__ import annotations

from ui.charts import BASELINE, STUDENT, TEACHER


# -- the bias shift, moved in the browser ------------------------------------------------------
def shift_label(s: float) -> str:
    return f"{s:g}"


def _metrics_text(rep: dict, base: dict, name: str) -> str:
    """The four numbers the page shows for one shift, with their change from no shift."""
    return (f"<b>test accuracy {rep['acc']:.2%}</b> ({(rep['acc'] - base['acc']) * 100:+.2f} pts)"
            f"  ·  <b>accuracy on class {name} {rep['class_acc']:.2%}</b> "
            f"({(rep['class_acc'] - base['class_acc']) * 100:+.2f} pts)<br>"
            f"errors on the {rep['n_class']} {name}s: <b>{rep['class_errors']}</b> "
            f"({rep['class_errors'] - base['class_errors']:+d})  ·  wrongly called {name}: "
            f"<b>{rep['false_class']}</b> ({rep['false_class'] - base['false_class']:+d}: what "
            f"too large a shift costs)")


def shift_explorer_figure(class_names: list[str], curve: list[dict], omitted: int,
                          active: int) -> dict:
    """Per-class accuracy with the shift, accuracy against the shift with a marker, and the
    headline numbers, one Plotly frame per shift of ``curve`` (``bias_curve``'s reports): the
    figure's slider moves the shift without a server rerun. ``curve`` must contain shift 0."""
    name = class_names[omitted]
    base = next(r for r in curve if r["shift"] == 0)
    xs = [r["shift"] for r in curve]
    colors = [TEACHER if i == omitted else STUDENT for i in range(len(class_names))]

    def moving(rep: dict) -> list[dict]:
        # Explicit offset and width: a frame drawn without redraw does not regroup bars. The
        # no-shift bars ride along in every frame: a bar subplot's untouched bars are dropped.
        return [{"type": "bar", "x": class_names, "y": base["per_class_acc"], "name": "no shift",
                 "marker": {"color": BASELINE}, "offset": -0.4, "width": 0.4},
                {"type": "bar", "x": class_names, "y": rep["per_class_acc"], "marker": {"color": colors},
                 "offset": 0, "width": 0.4,
                 "name": f"bias of class {name} shifted"},
                {"type": "scatter", "x": [rep["shift"]] * 2, "y": [0, 1.02], "mode": "lines",
                 "line": {"color": "#444444", "dash": "dot"}, "name": f"shift {rep['shift']:g}",
                 "showlegend": False, "xaxis": "x2", "yaxis": "y2", "hoverinfo": "skip"}]

    def notes(rep: dict) -> list[dict]:
        return [{"text": _metrics_text(rep, base, name), "x": 0, "y": 1.0, "xref": "paper",
                 "yref": "paper", "xanchor": "left", "yanchor": "bottom", "align": "left",
                 "showarrow": False, "font": {"size": 14}},
                {"text": "Test accuracy per class", "x": 0, "y": 0.8, "xref": "paper",
                 "yref": "paper", "xanchor": "left", "yanchor": "bottom", "showarrow": False},
                {"text": "Accuracy against the bias shift", "x": 0.54, "y": 0.8, "xref": "paper",
                 "yref": "paper", "xanchor": "left", "yanchor": "bottom", "showarrow": False}]

    static = [{"type": "scatter", "x": xs, "y": [r["acc"] for r in curve], "name": "all classes",
               "mode": "lines", "line": {"color": STUDENT, "width": 2}, "xaxis": "x2", "yaxis": "y2"},
              {"type": "scatter", "x": xs, "y": [r["class_acc"] for r in curve],
               "name": f"class {name}", "mode": "lines", "line": {"color": TEACHER, "width": 2},
               "xaxis": "x2", "yaxis": "y2"}]
    first = curve[active]
    data = moving(first)
    steps = [{"method": "animate", "label": shift_label(r["shift"]),
              "args": [[shift_label(r["shift"])], {"mode": "immediate", "transition": {"duration": 0},
                                                   "frame": {"duration": 0, "redraw": False}}]}
             for r in curve]
    layout = {
        "height": 520, "margin": {"l": 10, "r": 10, "t": 50, "b": 90}, "barmode": "overlay",
        "hovermode": "closest", "legend": {"orientation": "h", "y": 0.86, "x": 1, "xanchor": "right",
                                           "yanchor": "bottom"},
        "xaxis": {"domain": [0, 0.46], "anchor": "y", "type": "category", "title": {"text": "class"},
                  "range": [-0.6, len(class_names) - 0.4]},
        "yaxis": {"domain": [0, 0.78], "range": [0, 1.02], "tickformat": ".0%",
                  "title": {"text": "accuracy"}},
        "xaxis2": {"domain": [0.54, 1], "anchor": "y2",
                   "title": {"text": f"shift added to class {name}'s logit"}},
        "yaxis2": {"domain": [0, 0.78], "anchor": "x2", "range": [0, 1.02], "tickformat": ".0%",
                   "title": {"text": "test accuracy"}},
        "annotations": notes(first),
        "sliders": [{"active": active, "steps": steps, "x": 0, "len": 1, "y": -0.22, "yanchor": "top",
                     "currentvalue": {"prefix": f"bias shift on class {name} = ", "font": {"size": 13}},
                     "font": {"size": 9}, "pad": {"t": 0}}]}
    frames = [{"name": shift_label(r["shift"]), "data": moving(r), "traces": [0, 1, 2],
               "layout": {"annotations": notes(r)}} for r in curve]
    return {"data": data + static, "layout": layout, "frames": frames}
