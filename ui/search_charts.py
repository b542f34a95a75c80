"""Figures for the Sweeps page's search mode (trial rows in, plotly figures out; no engine access).

The history chart is drawn here so pruned trials show as marked points at the value they were
stopped at; importances, the contour / slice of two knobs and the Pareto front are Optuna's own
figures on a study rebuilt from the rows (:func:`kdengine.experiments.search.study_of`)."""
from __future__ import annotations

import plotly.graph_objects as go

from ui.charts import PALETTE, style

STATE_STYLE = {"complete": (PALETTE[0], "circle"), "reused": (PALETTE[0], "circle-open"),
               "pruned": ("#9D9DA1", "x"), "failed": ("#E45756", "triangle-down")}


def history_figure(rows: list[dict], metric: str, maximise: bool = True) -> go.Figure:
    """Each finished trial's value by trial number, one marker style per state, and the best so far."""
    fig = go.Figure()
    for state, (color, symbol) in STATE_STYLE.items():
        pts = [r for r in rows if r["state"] == state and r["value"] is not None]
        if pts:
            fig.add_scatter(x=[r["trial"] for r in pts], y=[r["value"] for r in pts], mode="markers",
                            name=state, marker=dict(color=color, symbol=symbol, size=9),
                            customdata=[[r["run_id"] or "", r["epochs"]] for r in pts],
                            hovertemplate="trial %{x}: %{y:.4f}<br>%{customdata[1]} epochs<br>"
                                          "run %{customdata[0]}<extra>" + state + "</extra>")
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] in ("complete", "reused") and r["value"] is not None:
            if best is None or (r["value"] > best if maximise else r["value"] < best):
                best = r["value"]
        if best is not None:
            xs.append(r["trial"])
            ys.append(best)
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="lines", name="best so far", line=dict(shape="hv"))
    from ui.words import metric_name
    return style(fig, "Optimisation history", "trial", metric_name(metric))


def optuna_figures(study, knobs: list[str], pareto: bool) -> dict[str, go.Figure]:
    """Optuna's plots that the study has enough trials for: importances, contour (two numeric knobs)
    or slice, and the Pareto front for two objectives."""
    import optuna.visualization as ov
    from optuna.trial import TrialState
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, go.Figure] = {}
    if pareto:
        if complete:
            out["pareto"] = ov.plot_pareto_front(study, target_names=["accuracy", "seconds / epoch"])
        return out
    if len(complete) >= 4 and len(knobs) >= 2:
        # PED-ANOVA: much faster than the default (fANOVA, 64 trees), which held up the page
        from optuna.importance import PedAnovaImportanceEvaluator
        try:
            out["importance"] = ov.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        except (RuntimeError, ValueError, ZeroDivisionError):   # too few or all alike
            pass
    numeric = [k for k in knobs if not hasattr(study.trials[0].distributions.get(k), "choices")] \
        if study.trials else []
    if len(complete) >= 3 and len(numeric) >= 2:
        out["contour"] = ov.plot_contour(study, params=numeric[:2])
    elif complete:
        out["slice"] = ov.plot_slice(study, params=knobs[:2])
    for fig in out.values():
        _name_knobs(fig, knobs)
    return out


def _name_knobs(fig: go.Figure, knobs: list[str]) -> None:
    """Optuna names the knobs by their config paths (axis titles, the importance bars): say their
    names instead."""
    from ui.words import knob_label
    names = {k: knob_label(k) for k in knobs}
    fig.for_each_xaxis(lambda a: a.update(title_text=names.get(a.title.text, a.title.text)))
    fig.for_each_yaxis(lambda a: a.update(title_text=names.get(a.title.text, a.title.text)))
    for t in fig.data:
        for axis in ("x", "y"):
            vals = getattr(t, axis, None)
            if vals is not None and len(vals) and all(isinstance(v, str) for v in vals):
                t.update({axis: [names.get(v, v) for v in vals]})
