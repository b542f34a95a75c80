"""Figures for the Boundaries page (plotly only, no streamlit, so ``bench/boundary.py`` can time them).

Decision regions are drawn as one RGB image per model: each grid cell's colour is the mixture of the
class colours weighted by the model's probabilities, so confident regions show the pure class colour
and the boundary shows as a blend, for any number of classes. The image goes to the browser as a
small PNG (one string, not n*n numbers), which keeps a 100 x 100 teacher + student redraw cheap.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go

from kdengine.analysis.boundaries import disagreement

CLASS_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6",
                "#9D755D", "#EECA3B", "#BAB0AC"]
TEACHER = "#F58518"
STUDENT = "#4C78A8"


def _rgb(hex_color: str) -> np.ndarray:
    h = hex_color.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float32)


def region_rgb(probs: np.ndarray, lighten: float = 0.45) -> np.ndarray:
    """(n, n, C) probabilities -> (n, n, 3) uint8: probability-weighted class colours, lightened
    toward white so markers stay readable on top."""
    C = probs.shape[-1]
    pal = np.stack([_rgb(CLASS_COLORS[c % len(CLASS_COLORS)]) for c in range(C)])
    rgb = probs @ pal
    rgb = rgb + (255.0 - rgb) * lighten
    return np.clip(rgb, 0, 255).astype(np.uint8)




def typed(a) -> dict:
    """A float array as plotly's typed-array spec (base64 float32). The JSON encoder otherwise
    writes every number as text: 10 000 floats cost more than the whole rest of the figure."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    spec = {"dtype": "f4", "bdata": base64.b64encode(a.tobytes()).decode()}
    if a.ndim > 1:
        spec["shape"] = ", ".join(str(d) for d in a.shape)
    return spec


def _png(rgb: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb[::-1]).save(buf, format="PNG")   # row 0 is the lowest y: flip for an image
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _placed(bounds, axis: str, n_x: int, n_y: int) -> dict:
    """Where a layout image of an n_x x n_y grid goes: stretched over the grid's cells. (An image
    *trace* would force square pixels and shrink the panel when the x and y ranges differ.)"""
    x0, x1, y0, y1 = bounds
    hx, hy = (x1 - x0) / max(1, n_x - 1) / 2, (y1 - y0) / max(1, n_y - 1) / 2   # half a cell
    return {"xref": "x" + axis, "yref": "y" + axis, "x": x0 - hx, "y": y1 + hy,
            "sizex": x1 - x0 + 2 * hx, "sizey": y1 - y0 + 2 * hy,
            "sizing": "stretch", "layer": "below", "xanchor": "left", "yanchor": "top"}


def _layout_image(rgb: np.ndarray, bounds, axis: str) -> dict:
    """The (n_y, n_x, 3) picture as a layout image over the grid."""
    return {"source": _png(rgb), **_placed(bounds, axis, rgb.shape[1], rgb.shape[0])}


def zero_line(f: np.ndarray, bounds) -> np.ndarray:
    """Where the grid ``f`` (row 0 = lowest y) crosses 0, as (k, 2) points in data coordinates:
    marching squares, one straight segment per crossed cell, NaN rows between segments.

    Sent as a plain scatter line, a replay frame changes it without plotly.js re-running its
    contour algorithm and redrawing the whole figure (a contour trace cannot be animated)."""
    ny, nx = f.shape
    x0, x1, y0, y1 = bounds
    xs, ys = np.linspace(x0, x1, nx), np.linspace(y0, y1, ny)
    pos = f > 0
    # corners of every cell: bottom-left, bottom-right, top-left, top-right
    c00, c01, c10, c11 = (np.s_[:-1, :-1], np.s_[:-1, 1:], np.s_[1:, :-1], np.s_[1:, 1:])
    edges = ((c00, c01), (c01, c11), (c10, c11), (c00, c10))      # bottom, right, top, left
    crossed = np.stack([pos[a] != pos[b] for a, b in edges])        # (4, ny-1, nx-1)
    n = crossed.sum(0)
    r, c = np.nonzero(n)                                            # only the cells the line crosses
    cx, cy, dx, dy = xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r]

    def frac(a: tuple, b: tuple) -> np.ndarray:        # where 0 lies along the edge a -> b
        fa, fb = f[a][r, c], f[b][r, c]
        with np.errstate(divide="ignore", invalid="ignore"):
            return fa / (fa - fb)
    tb, tr, tt, tl = (frac(a, b) for a, b in edges)
    pts = np.stack([np.stack(xy, -1) for xy in ((cx + tb * dx, cy), (cx + dx, cy + tr * dy),
                                                (cx + tt * dx, cy + dy), (cx, cy + tl * dy))])
    hit = crossed[:, r, c]                                          # (4, k)
    k = np.arange(len(r))
    two = np.nonzero(n[r, c] == 2)[0]
    order = np.argsort(~hit[:, two], axis=0, kind="stable")        # the two crossed edges first
    segs = [np.stack([pts[order[0], two], pts[order[1], two]], 1)]
    # a saddle (all four edges crossed): the centre's sign says which corners the line separates
    sad = k[n[r, c] == 4]
    if sad.size:
        centre = sum(f[q][r[sad], c[sad]] for q in (c00, c01, c10, c11)) / 4
        j = ((centre > 0) == pos[c00][r[sad], c[sad]])[:, None]    # corners 00 and 11 joined
        b_, r_, t_, l_ = (pts[e, sad] for e in range(4))
        segs += [np.stack([b_, np.where(j, r_, l_)], 1), np.stack([t_, np.where(j, l_, r_)], 1)]
    segs = np.concatenate(segs).astype(np.float32)
    gap = np.full((len(segs), 1, 2), np.nan, dtype=np.float32)
    return np.concatenate([segs, gap], 1).reshape(-1, 2)


def _boundary_line(p: np.ndarray, bounds, axis: str) -> dict:
    """The p = 0.5 line of a two-class model (where p1 - p0 crosses 0), as a scatter line."""
    line = zero_line(p[..., 1] - p[..., 0], bounds)
    return {"type": "scatter", "x": typed(line[:, 0]), "y": typed(line[:, 1]), "mode": "lines",
            "line": {"color": "#333", "width": 1.5}, "hoverinfo": "skip",
            "name": "boundary (p = 0.5)", "legendgroup": "boundary", "showlegend": axis == "",
            "xaxis": "x" + axis, "yaxis": "y" + axis}


# plotly.js's "Reds" colour scale, which the disagreement map used as a heatmap trace
REDS = ((0.0, (220, 220, 220)), (0.2, (245, 195, 157)), (0.4, (245, 160, 105)), (1.0, (178, 10, 28)))


def disagreement_rgb(tv: np.ndarray) -> np.ndarray:
    """(n, n) total-variation distances in [0, 1] -> (n, n, 3) uint8 in the Reds scale: the map
    goes as a layout image like the regions, so a replay frame only swaps images."""
    stops = [s for s, _ in REDS]
    chans = [np.interp(np.clip(tv, 0, 1), stops, [c[k] for _, c in REDS]) for k in range(3)]
    return np.rint(np.stack(chans, -1)).astype(np.uint8)


def _points(pts, labels, class_names, axis: str, show_legend: bool) -> list[dict]:
    out = []
    for c in np.unique(labels):
        sel = labels == c
        name = class_names[int(c)]
        out.append({"type": "scatter", "x": typed(pts[sel, 0]), "y": typed(pts[sel, 1]),
                    "mode": "markers",
                    "name": name, "legendgroup": f"class{c}", "showlegend": show_legend,
                    "marker": {"size": 4, "color": CLASS_COLORS[int(c) % len(CLASS_COLORS)],
                               "line": {"width": 0.5, "color": "#222"}},
                    "hovertemplate": "(%{x:.2f}, %{y:.2f})<extra>" + name + "</extra>",
                    "xaxis": "x" + axis, "yaxis": "y" + axis})
    return out


def _bss(bss: dict, axis: str, show_legend: bool) -> list[dict]:
    traj = np.asarray(bss["traj"], dtype=np.float32)          # (B, S+1, 2)
    if traj.size == 0:
        return []
    # one trace for all paths: NaN breaks the line between samples
    gap = np.full((traj.shape[0], 1, 2), np.nan, dtype=np.float32)
    path = np.concatenate([traj, gap], 1).reshape(-1, 2)
    flipped = np.asarray(bss.get("flipped", [False] * len(traj)), bool)
    names = bss.get("class_names") or [str(c) for c in range(max(bss["base"] + bss["target"]) + 1)]
    text = [f"{names[b]} → {names[k]}" for b, k in zip(bss["base"], bss["target"])]
    ax = {"xaxis": "x" + axis, "yaxis": "y" + axis}
    return [
        {"type": "scatter", "x": typed(path[:, 0]), "y": typed(path[:, 1]), "mode": "lines",
         "name": "BSS path",
         "legendgroup": "bss_path", "showlegend": show_legend, "hoverinfo": "skip",
         "line": {"color": "rgba(20,20,20,0.55)", "width": 1}, **ax},
        {"type": "scatter", "x": typed(traj[:, 0, 0]), "y": typed(traj[:, 0, 1]), "mode": "markers",
         "name": "base sample", "legendgroup": "bss_base", "showlegend": show_legend,
         "hoverinfo": "skip", "marker": {"size": 6, "symbol": "circle-open", "color": "#111",
                                         "line": {"width": 1.5}}, **ax},
        {"type": "scatter", "x": typed(traj[:, -1, 0]), "y": typed(traj[:, -1, 1]), "mode": "markers",
         "name": "boundary sample", "legendgroup": "bss_end", "showlegend": show_legend,
         "text": text, "hovertemplate": "%{text}<extra>BSS</extra>",
         "marker": {"size": 8, "symbol": np.where(flipped, "x", "diamond").tolist(),
                    "color": "#111", "line": {"width": 1, "color": "white"}}, **ax},
    ]


def boundary_figure(p_teacher: np.ndarray | None, p_student: np.ndarray, bounds,
                    points: np.ndarray | None = None, labels: np.ndarray | None = None,
                    class_names: list[str] | None = None, bss: dict | None = None,
                    show_disagreement: bool = False, student_title: str = "student",
                    height: int = 430) -> dict:
    """Teacher and student decision regions side by side (plus the disagreement map if asked),
    with training points and BSS paths drawn on every panel.

    Returns a plain plotly figure dict: built with ``go.Figure``/``make_subplots`` the same figure
    spent most of its time in plotly's property validation (docs/perf.md, *Live view*)."""
    C = p_student.shape[-1]
    class_names = class_names or [f"class {c}" for c in range(C)]
    panels, probs = [], []
    if p_teacher is not None:
        panels.append(("teacher", region_rgb(p_teacher)))
        probs.append(p_teacher)
    panels.append((student_title, region_rgb(p_student)))
    probs.append(p_student)
    if show_disagreement and p_teacher is not None:
        tv, share = disagreement(p_teacher, p_student)
        panels.append((f"disagreement (top class differs on {share:.0%} of the grid)",
                       disagreement_rgb(tv)))
    x0, x1, y0, y1 = bounds
    k, gap = len(panels), 0.03
    width = (1 - gap * (k - 1)) / k
    data, layout = [], {
        "height": height, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "legend": {"orientation": "h", "y": -0.18, "x": 0}, "uirevision": "boundaries",
        "annotations": [], "images": [], "plot_bgcolor": "white"}
    for i, (title, img) in enumerate(panels):
        axis = "" if i == 0 else str(i + 1)
        lo = i * (width + gap)
        # Fixed ranges and equal panel widths; panels zoom together (matches), no scaleanchor:
        # with it plotly shrank the panels unequally.
        layout["xaxis" + axis] = {"domain": [lo, lo + width], "range": [x0, x1],
                                  "anchor": "y" + axis,
                                  "showgrid": False, "zeroline": False,
                                  "title": {"text": "x₁ (standardised)"}}
        layout["yaxis" + axis] = {"range": [y0, y1], "anchor": "x" + axis, "showgrid": False,
                                  "zeroline": False, "showticklabels": i == 0}
        if i == 0:
            layout["yaxis"]["title"] = {"text": "x₂ (standardised)"}
        else:
            layout["xaxis" + axis]["matches"] = "x"
            layout["yaxis" + axis]["matches"] = "y"
        layout["annotations"].append({"text": title, "x": lo + width / 2, "y": 1.0, "xref": "paper",
                                      "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                                      "showarrow": False, "font": {"size": 14}})
        layout["images"].append(_layout_image(img, bounds, axis))
        if C == 2 and i < len(probs):
            data.append(_boundary_line(probs[i], bounds, axis))
        if points is not None and labels is not None:
            data += _points(points, labels, class_names, axis, show_legend=(i == 0))
        if bss and bss.get("traj"):
            data += _bss(bss, axis, show_legend=(i == 0))
    return {"data": data, "layout": layout}


# -- replay: every epoch in one figure, stepped through in the browser ----------------------------
DOMAINS = {2: [[0, 0.485], [0.515, 1], [0.999, 1]], 3: [[0, 0.31], [0.345, 0.655], [0.69, 1]]}


def _bss_traces(bss: dict | None, axis: str, show_legend: bool) -> list[dict]:
    """The three BSS traces, empty for an epoch without samples (a frame needs a fixed set)."""
    traces = _bss(bss, axis, show_legend) if bss and bss.get("traj") else []
    if traces:
        return traces
    ax = {"xaxis": "x" + axis, "yaxis": "y" + axis}
    return [{"type": "scatter", "x": [], "y": [], "mode": m, "name": n, "legendgroup": g,
             "showlegend": False, **ax}
            for m, n, g in (("lines", "BSS path", "bss_path"), ("markers", "base sample", "bss_base"),
                            ("markers", "boundary sample", "bss_end"))]


def _epoch_view(p_teacher, h: dict, bounds, s_axis: str, C: int, show_bss: bool, has_bss: bool,
                ) -> tuple[list[dict], list[dict], list[dict]]:
    """What one epoch changes: its traces (the student's boundary line, the BSS samples), and the
    source of each moving layout image and the text of each moving title (the student's panel,
    then the disagreement map's)."""
    traces = [_boundary_line(h["probs"], bounds, s_axis)] if C == 2 else []
    if show_bss and has_bss:
        for axis in (["", s_axis] if p_teacher is not None else [s_axis]):
            traces += _bss_traces(h.get("bss"), axis, show_legend=(axis == ""))
    images = [{"source": _png(region_rgb(h["probs"]))}]
    titles = [{"text": f"student, epoch {h['epoch']}"}]
    if p_teacher is not None:
        tv, share = disagreement(p_teacher, h["probs"])
        images.append({"source": _png(disagreement_rgb(tv))})
        titles.append({"text": f"disagreement: top class differs on {share:.0%}"})
    return traces, images, titles


def _title(text: str, axis: str, bounds) -> dict:
    """A panel's title in data coordinates: it follows its panel when the switch resizes the
    panels, and a frame without redraw repaints it (plotly.js redraws axis-bound annotations)."""
    return {"text": text, "x": (bounds[0] + bounds[1]) / 2, "y": 1.0, "xref": "x" + axis,
            "yref": "paper", "xanchor": "center", "yanchor": "bottom", "showarrow": False,
            "font": {"size": 14}}


def _disagreement_buttons() -> dict:
    """Show or hide the disagreement panel in the browser: its image, title and axes, and the
    panel widths (layout image 2 and annotation 2 are the map's)."""
    def state(k: int) -> list:
        doms = DOMAINS[k]
        lay = {f"xaxis{a}.domain": doms[i] for i, a in enumerate(("", "2", "3"))}
        lay.update({"xaxis3.visible": k == 3, "yaxis3.visible": k == 3,
                    "images[2].visible": k == 3, "annotations[2].visible": k == 3})
        return [lay]
    return {"type": "buttons", "direction": "right", "active": 0, "showactive": True,
            "x": 1, "xanchor": "right", "y": 1.09, "yanchor": "bottom", "pad": {"t": 0, "r": 0},
            "buttons": [{"label": "disagreement map off", "method": "relayout", "args": state(2)},
                        {"label": "disagreement map on", "method": "relayout", "args": state(3)}]}


def replay_figure(p_teacher: np.ndarray | None, history: list[dict], points=None, labels=None,
                  class_names: list[str] | None = None, show_bss: bool = True,
                  active: int | None = None, height: int = 520) -> dict:
    """Teacher and student regions with a slider over every epoch of ``history``
    (``kdengine.analysis.boundaries.epoch_history``) and a disagreement-map switch, both acting in
    the browser: one Plotly frame per epoch; the server sends the figure again only when a new
    epoch exists. Without a teacher, the student alone and no switch.

    A frame changes only scatter traces, layout images and axis-bound titles, so it plays without
    a full redraw (``redraw: False``): plotly.js moves the traces and repaints the images and
    titles, and the repaint costs a few tens of ms instead of a few hundred. Frames list only the
    moving images and titles (``{}`` keeps an entry as it is, its visibility included)."""
    last = history[-1]
    active = len(history) - 1 if active is None else active
    bounds, C = last["bounds"], last["probs"].shape[-1]
    x0, x1, y0, y1 = bounds
    class_names = class_names or [f"class {c}" for c in range(C)]
    has_t = p_teacher is not None
    s_axis = "2" if has_t else ""
    has_bss = any(h.get("bss") and h["bss"].get("traj") for h in history)
    views = [_epoch_view(p_teacher, h, bounds, s_axis, C, show_bss, has_bss) for h in history]
    moving, images, titles = views[active]
    data = list(moving)
    if has_t and C == 2:
        data.append(_boundary_line(p_teacher, bounds, ""))
    if points is not None and labels is not None:
        for axis in ([""] if has_t else []) + [s_axis]:
            data += _points(points, labels, class_names, axis, show_legend=(axis == ""))
    n_y, n_x = last["probs"].shape[:2]
    moving_axes = [s_axis, "3"] if has_t else [s_axis]
    fixed = [{}] if has_t else []           # the teacher's image and title never change
    layout = {"height": height, "margin": {"l": 10, "r": 10, "t": 60, "b": 10},
              "legend": {"orientation": "h", "y": -0.14, "x": 0}, "plot_bgcolor": "white",
              "uirevision": "boundaries", "hovermode": "closest",
              "images": ([_layout_image(region_rgb(p_teacher), bounds, "")] if has_t else [])
              + [{**_placed(bounds, a, n_x, n_y), **img} for a, img in zip(moving_axes, images)],
              "annotations": ([_title("teacher", "", bounds)] if has_t else [])
              + [{**_title("", a, bounds), **t} for a, t in zip(moving_axes, titles)]}
    panels = ["", "2", "3"] if has_t else [""]
    for i, axis in enumerate(panels):
        dom = DOMAINS[2][i] if has_t else [0, 1]
        layout["xaxis" + axis] = {"domain": dom, "range": [x0, x1], "anchor": "y" + axis,
                                  "showgrid": False, "zeroline": False,
                                  "title": {"text": "x₁ (standardised)"}}
        layout["yaxis" + axis] = {"range": [y0, y1], "anchor": "x" + axis, "showgrid": False,
                                  "zeroline": False, "showticklabels": i == 0}
        if i:
            layout["xaxis" + axis]["matches"] = "x"
            layout["yaxis" + axis]["matches"] = "y"
    layout["yaxis"]["title"] = {"text": "x₂ (standardised)"}
    if has_t:
        for k in ("xaxis3", "yaxis3"):
            layout[k]["visible"] = False
        layout["images"][2]["visible"] = layout["annotations"][2]["visible"] = False
        layout["updatemenus"] = [_disagreement_buttons()]
    names = [str(h["epoch"]) for h in history]
    if len(history) > 1:
        layout["sliders"] = [{
            "active": active, "x": 0, "len": 1, "y": -0.24, "yanchor": "top", "pad": {"t": 0},
            "currentvalue": {"prefix": "epoch snapshot ", "font": {"size": 13}},
            "font": {"size": 10},
            "steps": [{"method": "animate", "label": n,
                       "args": [[n], {"mode": "immediate", "transition": {"duration": 0},
                                      "frame": {"duration": 0, "redraw": False}}]} for n in names]}]
        layout["margin"]["b"] = 90
        layout["height"] = height + 60
    frames = [{"name": n, "data": d, "traces": list(range(len(d))),
               "layout": {"images": fixed + imgs, "annotations": fixed + notes}}
              for n, (d, imgs, notes) in zip(names, views)]
    return {"data": data, "layout": layout, "frames": frames}


class PrebuiltFigure(go.Figure):
    """A figure that hands out a ready dict. ``st.plotly_chart`` re-validates a plain dict through
    ``go.Figure(**d)`` (slow for a figure this size) but trusts a Figure's ``to_dict()``;
    our dicts only use documented plotly properties, checked once by the tests."""

    def __init__(self, fig: dict):
        super().__init__()
        self._prebuilt = fig

    def to_dict(self):
        return self._prebuilt

    def to_plotly_json(self):
        return self._prebuilt


def similarity_figure(curves: list[tuple[str, list, list]], metric: str, title: str) -> go.Figure:
    """One line per run of MagSim or AngSim against epoch."""
    fig = go.Figure()
    for i, (label, x, y) in enumerate(curves):
        dash = "solid" if label.startswith("bss") else ("dash" if "alone" in label else "dot")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, marker={"size": 4},
                                 line={"color": CLASS_COLORS[i % len(CLASS_COLORS)], "width": 2,
                                       "dash": dash}))
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="epoch",
                      yaxis_title=f"{metric} (1 = same boundary)", yaxis_range=[0, 1.02],
                      legend={"orientation": "h", "y": -0.3, "x": 0}, hovermode="x unified")
    return fig


def upscale(img: np.ndarray, size: int = 96) -> np.ndarray:
    """(C, H, W) or (H, W) pixels in [0, 1] -> (size', size', 3 or 1) by pixel repetition, so small
    digits stay crisp instead of being blurred by the browser."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0)
        if a.shape[2] == 1:
            a = a[:, :, 0]
    k = max(1, size // a.shape[0])
    a = np.repeat(np.repeat(a, k, 0), k, 1)
    return np.clip(a, 0, 1)


def amplified_difference(x_base, x_bss, gain: float | None = None) -> tuple[np.ndarray, float]:
    """0.5 + gain * (x_bss - x_base), clipped to [0, 1]; gain fills the range unless given."""
    d = np.asarray(x_bss, np.float32) - np.asarray(x_base, np.float32)
    m = float(np.abs(d).max())
    g = gain if gain is not None else (0.5 / m if m > 0 else 1.0)
    return np.clip(0.5 + g * d, 0, 1), g
