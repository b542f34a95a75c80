"""Boundaries: teacher and student decision regions, live, with BSS boundary-supporting samples.

2-D data: both models' regions side by side with the training points; BSS samples and their paths;
an optional disagreement map; a slider back through the per-epoch snapshots the trainer stores.
Image data: a gallery of boundary samples. Any data: MagSim / AngSim over training, against other
runs on the same data. Everything is read from ``engine.snapshot`` (live) and the run store
(history); the view redraws about once a second while the run is active (``ui.live``).
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from kdengine import ConfigError, RunConfig, RunSnapshot, TOY_DATASETS
from kdengine.analysis.boundaries import (dequantise, epoch_history, similarity_absent_reason,
                                          similarity_note)
from ui import boundary_figs as bf
from ui import charts, state, widgets
from ui.classroom import caller, locks_notice, with_locks
from ui.engine import get_engine, owner_id, owner_runs, stored_runs
from ui.live import live_run

ss = st.session_state
engine = get_engine()
owner = owner_id()
PRESET = "moons-bss"

st.title("Decision boundaries")
st.caption("Where do teacher and student draw the line between classes? BSS (Heo et al., AAAI 2019) "
           "attacks the teacher to find samples right on its boundary and distils on them too. "
           "MagSim / AngSim measure how far (distance) and in which direction the student's boundary "
           "lies from each probe sample compared with the teacher's: 1 = the same boundary.")
locks_notice()


def start_preset() -> None:
    try:
        rid = engine.submit(with_locks(state.load_preset(PRESET)), owner=owner, name="moons · BSS",
                            caller=caller())
    except ConfigError as e:
        ss["bd_error"] = str(e)
        return
    ss["bd_run"] = rid


def data_kind(cfg: dict) -> str:
    name = cfg.get("data", {}).get("name", "")
    return "2d" if name in TOY_DATASETS else ("text" if name == "text" else "image")


def candidate_runs() -> list[RunSnapshot]:
    """This session's runs in the engine, then stored runs; text runs have no input boundary."""
    seen, out = set(), []
    for r in owner_runs() + stored_runs(limit=200):
        if r.run_id in seen or data_kind(r.config) == "text":
            continue
        seen.add(r.run_id)
        out.append(r)
    return out


def method_label(cfg: dict) -> str:
    m = cfg.get("method", {})
    name, p = m.get("name", "?"), m.get("params", {})
    if name == "hinton" and p.get("soft_weight", 1) == 0:
        return "student alone (KD weight 0)"
    return {"hinton": "plain KD", "bss": "bss"}.get(name, name)


c1, c2 = st.columns([3, 1])
c2.button(f"Train {PRESET}", on_click=start_preset, key="bd_start", icon=":material/play_arrow:",
          help="Moons, MLP teacher 3x64, student 1x8, BSS; about 20 s on a laptop CPU.")
if ss.get("bd_error"):
    st.error(ss.pop("bd_error"))
runs = candidate_runs()
with c1:
    active = [r.run_id for r in runs if r.active]
    run_id = widgets.run_picker(runs, key="bd_run", default=(active or [None])[0],
                                help="Runs on 2-D or image data; this session's runs first.")
if run_id is None:
    st.stop()

kind = data_kind(next(r.config for r in runs if r.run_id == run_id))


@st.cache_data(max_entries=4, show_spinner=False)
def training_points(data_cfg: dict, limit: int = 500):
    """Up to ``limit`` transfer-set points (standardised, like the grid) with their labels."""
    from kdengine import load_data
    data = load_data(RunConfig.from_dict({"data": data_cfg}).data)
    x, y = data.transfer.x.numpy(), data.transfer.y.numpy()
    idx = np.random.default_rng(0).permutation(len(y))[:limit]
    return x[idx], y[idx], list(data.class_names)


@st.cache_data(max_entries=4, show_spinner=False)
def history(run_id: str, upto_epoch: int) -> list[dict]:
    """Every stored epoch's student grid and BSS samples, oldest first (once per new epoch)."""
    return epoch_history(get_engine().store, run_id)


def comparison_curves(snap: RunSnapshot) -> dict[str, list]:
    """MagSim / AngSim of this run and of other runs on the same data."""
    out = {"magsim": [], "angsim": []}
    for metric in out:
        x, y = charts.xy(snap.series, metric)
        if x:
            out[metric].append((f"{method_label(snap.config)} · this run", x, y))
    same = [r for r in runs if r.run_id != snap.run_id
            and r.config.get("data") == snap.config.get("data")][:6]
    for r in same:
        rid = r.run_id
        rows = engine.store.metrics(rid, ["magsim", "angsim"])
        for metric in out:
            pts = [(m["epoch"], m["value"]) for m in rows if m["name"] == metric and m["value"] is not None]
            if pts:
                out[metric].append((f"{method_label(r.config)} · {rid[-6:]}",
                                    [p[0] for p in pts], [p[1] for p in pts]))
    return out


def similarity_charts(snap: RunSnapshot) -> None:
    curves = comparison_curves(snap)
    if not curves["magsim"]:
        has_teacher = bool(snap.artifacts.get("grid_teacher")) or (
            snap.config.get("teacher", {}).get("source", "train") != "none"
            and snap.config.get("method", {}).get("name") != "ce")
        st.info(similarity_absent_reason(snap.config, has_teacher), icon=":material/info:")
        return
    a, b = st.columns(2)
    with a.container(key="bd_magsim"):
        charts.show(bf.similarity_figure(curves["magsim"], "MagSim", "MagSim: distance to the "
                                         "boundary, student vs teacher"))
    with b.container(key="bd_angsim"):
        charts.show(bf.similarity_figure(curves["angsim"], "AngSim", "AngSim: direction to the "
                                         "boundary, student vs teacher"))
    with st.expander("How these two are measured, and how that differs from the paper"):
        st.markdown(similarity_note())


def status_line(snap: RunSnapshot) -> None:
    total = snap.config.get("train", {}).get("epochs", "?")
    msg = f"**{snap.status}** · epoch {snap.epoch:g} of {total}"
    if snap.phase_message:
        msg += f" · {snap.phase_message}"
    st.markdown(msg)
    if snap.error and snap.status == "stopped":   # the user's own choice, not a fault
        st.info(f"Stopped by you at epoch {snap.epoch:g}; everything up to there is kept.",
                icon=":material/stop_circle:")
    elif snap.error:
        st.error(snap.error)


def view_2d(run_id: str) -> None:
    snap = engine.snapshot(run_id)
    status_line(snap)
    arts = snap.artifacts
    s_grid, t_grid = arts.get("grid_student"), arts.get("grid_teacher")
    if s_grid is None:
        if snap.active:
            st.info("Waiting for the first epoch to finish…", icon=":material/hourglass_top:")
        else:
            st.info(f"This run ended ({snap.status}) before its first epoch did, so there is no "
                    f"boundary to show.", icon=":material/info:")
        return
    latest = int(s_grid["epoch"])
    # Every epoch goes to the browser as one frame: the figure's own slider and disagreement
    # switch redraw there, and the server sends the figure again only when a new epoch exists.
    hist = history(run_id, latest)
    if not hist or hist[-1]["epoch"] != latest:        # a live run: the store lags the snapshot
        hist = epoch_history(engine.store, run_id, s_grid, arts.get("bss"))
    pts, labels, names = training_points(snap.config["data"])
    p_t = dequantise(t_grid["probs"]) if t_grid else None
    show_bss = ss.get("bd_show_bss", True)
    with st.container(key="bd_heatmap"):
        charts.show(bf.PrebuiltFigure(bf.replay_figure(p_t, hist, pts, labels, names, show_bss)),
                    key=f"bd_fig_{run_id}")
    bss = hist[-1]["bss"]
    if bss and ss.get("bd_show_bss", True):
        n, flipped = len(bss["base"]), sum(bss["flipped"])
        st.caption(f"{n} boundary-supporting samples from the last attacked batch of each epoch: "
                   f"○ base sample → path → ◆ where the search stopped (✕ if the teacher's class "
                   f"flipped; {flipped} of {n}). They attack the teacher only; on the student's "
                   f"panel they show whether its boundary passes through the same places.")
    similarity_charts(snap)


def view_images(run_id: str) -> None:
    snap = engine.snapshot(run_id)
    status_line(snap)
    bss = snap.artifacts.get("bss")
    if not bss:
        st.info("Boundary samples come from BSS runs (the method bss); this run's method is "
                f"{snap.config['method']['name']}.", icon=":material/info:")
    else:
        names = bss["class_names"]
        st.subheader("Boundary-supporting samples")
        st.caption("Each row: the base image, the sample the attack on the teacher produced, and "
                   "their difference amplified to fill the grey range (mid-grey = unchanged). The "
                   "probabilities are for the base class b and the target class k, before and "
                   "after the attack.")
        with st.container(key="bd_gallery"):
            for i in range(len(bss["x_base"])):
                b, k = bss["base"][i], bss["target"][i]
                diff, gain = bf.amplified_difference(bss["x_base"][i], bss["x_bss"][i])
                cols = st.columns([1, 1, 1, 2.2])
                cols[0].image(bf.upscale(bss["x_base"][i]), caption=f"base: {names[b]}", width=96)
                cols[1].image(bf.upscale(bss["x_bss"][i]), width=96,
                              caption=f"boundary sample → {names[k]}"
                              + (" (flipped)" if bss["flipped"][i] else ""))
                cols[2].image(bf.upscale(diff), caption=f"difference × {gain:.0f}", width=96)
                rows = [("teacher", bss["t_before"][i], bss["t_after"][i]),
                        ("student", bss["s_before"][i], (bss.get("s_after") or bss["s_before"])[i])]
                cols[3].markdown("\n".join(
                    [f"| | p({names[b]}) | p({names[k]}) |", "|---|---|---|"]
                    + [f"| {who} | {pb[b]:.2f} → {pa[b]:.2f} | {pb[k]:.2f} → {pa[k]:.2f} |"
                       for who, pb, pa in rows]))
    similarity_charts(snap)


if kind == "2d":
    st.toggle("BSS samples", value=True, key="bd_show_bss")
    st.caption("The slider under the regions steps through the saved epochs, and the switch above "
               "them adds the disagreement map (total-variation distance between teacher and "
               "student probabilities: the darker, the more they differ); both redraw in the "
               "browser.")
    live_run(view_2d, run_id, key="boundaries")
else:
    live_run(view_images, run_id, key="boundaries")
