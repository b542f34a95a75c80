"""The Soft-targets view of a text (multi-label) run: per-label probabilities of one sentence.

Numbers come from ``kdengine.analysis.text_view``; this module is charts and layout. The Soft targets page
calls :func:`show_text_sample` instead of its softmax view when the run's data is text.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kdengine.analysis import soft_targets as explore
from kdengine.analysis import text_view as text_explore
from ui import charts


def per_label_figure(view: dict) -> go.Figure:
    """Teacher and student probability of each label at T, with the true labels marked."""
    names = [f"{r['label']}{' ✓' if r['true'] else ''}" for r in view["rows"]]
    fig = go.Figure()
    if view["p_teacher"] is not None:
        fig.add_trace(go.Bar(x=names, y=list(view["p_teacher"]), name="teacher",
                             marker_color=charts.TEACHER))
    fig.add_trace(go.Bar(x=names, y=list(view["p_student"]), name="student",
                         marker_color=charts.STUDENT))
    fig.add_hline(y=0.5, line={"color": charts.BASELINE, "dash": "dot"},
                  annotation_text="decision threshold 0.5", annotation_position="top right")
    fig.update_layout(barmode="group", yaxis_range=[0, 1])
    return charts.style(fig, f"per-label probability sigmoid(z / T) at T = {view['T']:g}  "
                               f"(✓ = true label)", "label", "probability", height=320)


def entropy_figure(models, i: int, T: float) -> go.Figure:
    Ts = explore.temperature_grid()
    fig = go.Figure()
    if models.t_test is not None:
        fig.add_trace(go.Scatter(x=Ts, y=text_explore.binary_entropy_curve(models.t_test[i], Ts),
                                 name="teacher", line={"color": charts.TEACHER, "width": 2}))
    fig.add_trace(go.Scatter(x=Ts, y=text_explore.binary_entropy_curve(models.s_test[i], Ts),
                             name="student", line={"color": charts.STUDENT, "width": 2}))
    fig.add_vline(x=T, line={"color": "#444", "dash": "dash"}, annotation_text=f"T = {T:g}")
    fig.add_hline(y=float(np.log(2)), line={"color": charts.BASELINE, "dash": "dot"},
                  annotation_text="log 2: a coin flip", annotation_position="bottom right")
    fig.update_xaxes(type="log")
    return charts.style(fig, "mean per-label entropy", "temperature T (log scale)",
                          "entropy (nats)", height=320)


def attention_figure(att: np.ndarray, tokens: list[str], title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=att, x=tokens, y=tokens, colorscale="Blues", zmin=0, zmax=1,
                               colorbar={"title": "weight"}))
    fig.update_yaxes(autorange="reversed")
    return charts.style(fig, title, "attends to (key)", "token (query)", height=380)


def show_text_sample(models, i: int, T: float) -> None:
    """The whole text view for test sentence ``i`` at temperature ``T``."""
    view = text_explore.text_sample_view(models, i, T)
    st.markdown(f"Sentence **{i}**: “{view['text']}”  \nTrue labels: **"
                f"{', '.join(view['true_labels']) or 'none'}**")
    with st.container(key="st_text_bars"):
        charts.show(per_label_figure(view))
    c1, c2 = st.columns(2, gap="large")
    with c1.container(key="st_text_entropy"):
        charts.show(entropy_figure(models, i, T))
    with c2:
        st.markdown(f"**Per-label KL(teacher ‖ student)** at T = {T:g} (binary, without T²)")
        df = pd.DataFrame([{"label": r["label"], "true": r["true"], "teacher p": r["teacher"],
                            "student p": r["student"], "KL": r["kl"]} for r in view["rows"]])
        if view["p_teacher"] is None:
            df = df.drop(columns=["teacher p", "KL"])
        st.dataframe(df, hide_index=True, width="stretch")
        if view["kl_total"] is not None:
            st.caption(f"Sum over labels: {view['kl_total']:.4f}; the training loss is this sum "
                       f"times T² = {T * T:g}, averaged over the batch.")
    st.subheader("Attention", divider="gray")
    who = st.radio("Model", ["student", "teacher"] if models.teacher is not None else ["student"],
                   horizontal=True, key="st_text_who")
    model = models.student if who == "student" else models.teacher
    maps = text_explore.attention_maps(model, models.data.test.x[i])
    if not maps:
        st.caption("This model exposes no attention maps.")
        return
    a, b = st.columns(2)
    ss = st.session_state              # teacher and student differ in depth and heads: clamp
    ss["st_text_layer"] = min(int(ss.get("st_text_layer", 1)), len(maps))
    ss["st_text_head"] = min(int(ss.get("st_text_head", 0)), maps[0].shape[0])
    layer = a.number_input("layer", 1, len(maps), key="st_text_layer")
    head = b.number_input("head", 0, maps[0].shape[0], key="st_text_head",
                          help="0 = mean over heads")
    att = maps[layer - 1]
    att = att.mean(0) if head == 0 else att[min(head, att.shape[0]) - 1]
    with st.container(key="st_text_attention"):
        charts.show(attention_figure(att, view["tokens"], f"{who}, layer {layer}, "
                                     f"{'mean of heads' if head == 0 else f'head {head}'}"))
