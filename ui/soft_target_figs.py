"""The Soft targets page's one figure, with its temperature slider running in the browser.

Every T-dependent number of the page (the softened distributions, the entropy marker, the wrong
classes ranked, DKD's identity filled in) is precomputed for each T of
``kdengine.analysis.soft_targets.slider_temperatures`` and carried as one Plotly frame per T; the
figure's own slider animates between frames, so moving T repaints without a server rerun. Plain
figure dicts (go.Figure validation of ~80 frames costs seconds), wrapped in ``PrebuiltFigure``.
"""
from __future__ import annotations

from typing import Any

from ui.boundary_figs import PrebuiltFigure
from ui.charts import BASELINE, STUDENT, TEACHER

HEIGHT = 860
# Vertical bands of the figure (paper coordinates): bars on top, entropy and ranking in the
# middle, DKD's identity as text at the bottom.
BARS_Y, MID_Y = [0.60, 1.0], [0.24, 0.49]


def frame_name(T: float) -> str:
    return f"{T:g}"


def _bars(names: list[str], view: dict) -> list[dict]:
    out = []
    if view["p_teacher"] is not None:
        out.append({"type": "bar", "x": names, "y": [float(p) for p in view["p_teacher"]],
                    "name": "teacher", "marker": {"color": TEACHER}, "legendgroup": "teacher",
                    "hovertemplate": "%{x}: %{y:.4f}<extra>teacher</extra>"})
    out.append({"type": "bar", "x": names, "y": [float(p) for p in view["p_student"]],
                "name": "student", "marker": {"color": STUDENT}, "legendgroup": "student",
                "hovertemplate": "%{x}: %{y:.4f}<extra>student</extra>"})
    return out


def _marker(view: dict) -> dict:
    T = view["T"]
    return {"type": "scatter", "x": [T, T], "y": [0, view["H_max"]], "mode": "lines",
            "name": f"T = {T:g}", "line": {"color": "#444", "dash": "dash"},
            "xaxis": "x2", "yaxis": "y2", "showlegend": False, "hoverinfo": "skip"}


def _ranked(view: dict) -> list[dict]:
    """The wrong classes, most probable under the teacher first (the order does not depend on T:
    dividing logits by T keeps their order), as horizontal bars; their numbers are in
    :func:`_ranking_table` (text on the bars tripled the redraw time)."""
    rows = view["wrong"][::-1]                     # plotly draws the first category at the bottom
    names = [r["name"] for r in rows]
    out = []
    if view["p_teacher"] is not None:
        out.append({"type": "bar", "orientation": "h", "y": names, "x": [r["teacher"] for r in rows],
                    "name": "teacher", "legendgroup": "teacher",
                    "showlegend": False, "marker": {"color": TEACHER}, "xaxis": "x3", "yaxis": "y3",
                    "hovertemplate": "%{y}: %{x:.4f}<extra>teacher</extra>"})
    out.append({"type": "bar", "orientation": "h", "y": names, "x": [r["student"] for r in rows],
                "name": "student", "legendgroup": "student",
                "showlegend": False, "marker": {"color": STUDENT}, "xaxis": "x3", "yaxis": "y3",
                "hovertemplate": "%{y}: %{x:.4f}<extra>student</extra>"})
    return out


def _ranking_table(view: dict) -> str:
    """The ranking's numbers, one line per wrong class, in the bars' order (top first)."""
    has_t = view["p_teacher"] is not None
    head = "class: " + ("teacher · " if has_t else "") + "student · share of wrong"
    rows = [f"{r['name']}: " + (f"{r['teacher']:.3f} · " if has_t else "")
            + f"{r['student']:.3f} · {r['share_of_wrong_mass']:.3f}" for r in view["wrong"]]
    return "<br>".join([f"<b>{head}</b>"] + rows)


def _note(text: str, x: float, y: float, size: int = 14, anchor: str = "left") -> dict:
    return {"text": text, "x": x, "y": y, "xref": "paper", "yref": "paper", "showarrow": False,
            "xanchor": anchor, "yanchor": "bottom", "align": "left", "font": {"size": size}}


def identity_lines(dkd: dict, T: float, two_classes: bool) -> list[str]:
    """DKD's identity with this T's numbers, in the words the page used to print."""
    w = dkd["weight"]
    return [
        f"<b>KD = TCKD + (1 − p<sub>t</sub>) · NCKD</b>:  {dkd['kl']:.4f} = {dkd['tckd']:.4f} + "
        f"(1 − {dkd['p_t']:.4f}) × {dkd['nckd']:.4f} = {dkd['tckd']:.4f} + {w * dkd['nckd']:.4f}",
        f"TCKD {dkd['tckd']:.4f} · NCKD {dkd['nckd']:.4f} · teacher p_target at T {dkd['p_t']:.4f} · "
        f"KD = KL(teacher ‖ student) {dkd['kl']:.4f}",
        f"Per-sample values without the T² factor (the training loss multiplies by T² = {T * T:g}). "
        f"Weight 1 − p_t = {w:.4f}; difference between the two sides: {dkd['gap']:.1e}."
        + (" Two classes: NCKD is always 0." if two_classes else ""),
    ]


def share_link(link: str, T: float) -> str:
    """The figure's link to this sample at ``T``: ``link`` is the page's query without T."""
    return f'<a href="{link}&T={T:g}" target="_blank">link to this view at T = {T:g}</a>'


def _annotations(view: dict, n_classes: int, link: str | None) -> list[dict]:
    T = view["T"]
    who = "teacher" if view["p_teacher"] is not None else "student"
    title = f"soft targets at T = {T:g}  (✓ = true class)"
    if link is not None:        # in the title the slider redraws, so it follows the slider
        title += "  ·  " + share_link(link, T)
    notes = [_note(title, 0, BARS_Y[1] + 0.005),
             _note("entropy of the softened distribution", 0, MID_Y[1] + 0.01),
             _note(f"wrong classes ranked by the {who} at T = {T:g}", 0.52, MID_Y[1] + 0.01),
             {**_note(_ranking_table(view), 1, MID_Y[1], size=11, anchor="right"),
              "yanchor": "top"}]
    if view["dkd"] is not None:
        for k, line in enumerate(identity_lines(view["dkd"], T, n_classes == 2)):
            notes.append(_note(line, 0, 0.115 - 0.04 * k, size=15 if k == 0 else 12))
    return notes


def _ranked_range(view: dict) -> list[float]:
    """The ranking's x range for this T (the frames carry it: the largest bar shrinks with T)."""
    top = max([r["student"] for r in view["wrong"]] + [r["teacher"] or 0 for r in view["wrong"]]
              + [1e-3])
    return [0, top * 1.05]


def _slider(Ts: list[float], active: int) -> dict:
    steps = [{"method": "animate", "label": frame_name(T),
              "args": [[frame_name(T)], {"mode": "immediate", "frame": {"duration": 0, "redraw": False},
                                         "transition": {"duration": 0}}]} for T in Ts]
    return {"active": active, "steps": steps, "x": 0, "len": 1, "y": 1.0, "yanchor": "bottom",
            "pad": {"t": 0, "b": 30}, "currentvalue": {"prefix": "temperature T = ",
                                                       "font": {"size": 14}},
            "font": {"size": 9}, "ticklen": 3}


def soft_target_figure(class_names: list[str], views: list[dict[str, Any]], active: int,
                       link: str | None = None) -> dict:
    """One figure for a sample: ``views`` are ``sample_view`` results at each slider T (in
    order); ``active`` is the index of the T shown first. ``link``: the page's query for this
    sample without T (``?run=...&i=...``); each frame then carries a link at its own T, since the
    slider moves in the browser and the page's address keeps the T it was opened with."""
    first = views[active]
    target = first["target"]
    names = [f"{c}{' ✓' if i == target else ''}" for i, c in enumerate(class_names)]
    Ts = [v["T"] for v in views]

    def dynamic(view: dict) -> list[dict]:
        return _bars(names, view) + [_marker(view)] + _ranked(view)

    static = []
    if first["H_teacher"] is not None:
        static.append({"type": "scatter", "x": list(first["Ts"]), "y": list(first["H_teacher"]),
                       "mode": "lines", "name": "teacher", "legendgroup": "teacher",
                       "showlegend": False, "line": {"color": TEACHER, "width": 2},
                       "xaxis": "x2", "yaxis": "y2"})
    static.append({"type": "scatter", "x": list(first["Ts"]), "y": list(first["H_student"]),
                   "mode": "lines", "name": "student", "legendgroup": "student", "showlegend": False,
                   "line": {"color": STUDENT, "width": 2}, "xaxis": "x2", "yaxis": "y2"})
    lo, hi = float(min(first["Ts"])), float(max(first["Ts"]))
    static.append({"type": "scatter", "x": [lo, hi], "y": [first["H_max"]] * 2, "mode": "lines",
                   "name": "uniform (log classes)", "line": {"color": BASELINE, "dash": "dot"},
                   "xaxis": "x2", "yaxis": "y2"})
    moving = dynamic(first)
    idx = list(range(len(moving)))                  # the frames replace these traces only
    ticks = [t for t in (0.5, 1, 2, 4, 8, 16) if lo <= t <= hi] + [hi]
    layout = {
        "height": HEIGHT, "margin": {"l": 10, "r": 10, "t": 80, "b": 0}, "barmode": "group",
        "hovermode": "closest", "legend": {"orientation": "h", "x": 1, "xanchor": "right",
                                           "y": BARS_Y[1] + 0.005, "yanchor": "bottom"},
        "xaxis": {"domain": [0, 1], "anchor": "y", "type": "category"},
        "yaxis": {"domain": BARS_Y, "range": [0, 1], "title": {"text": "probability"}},
        "xaxis2": {"domain": [0, 0.44], "anchor": "y2", "type": "log", "tickvals": ticks,
                   "ticktext": [f"{t:g}" for t in ticks],
                   "title": {"text": "temperature T (log scale)"}},
        "yaxis2": {"domain": MID_Y, "anchor": "x2", "title": {"text": "entropy (nats)"}},
        "xaxis3": {"domain": [0.52, 0.68], "anchor": "y3", "range": _ranked_range(first),
                   "title": {"text": "probability"}},
        "yaxis3": {"domain": MID_Y, "anchor": "x3", "type": "category"},
        "annotations": _annotations(first, len(class_names), link),
        "sliders": [_slider(Ts, active)],
    }
    frames = [{"name": frame_name(v["T"]), "data": dynamic(v), "traces": idx,
               "layout": {"annotations": _annotations(v, len(class_names), link),
                          "xaxis3.range": _ranked_range(v)}} for v in views]
    return {"data": moving + static, "layout": layout, "frames": frames}


def prebuilt(fig: dict) -> PrebuiltFigure:
    return PrebuiltFigure(fig)
