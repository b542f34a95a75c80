"""AppTest of the Boundaries page on stored 2-D and image runs (real, short runs; no mocks)."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from kdengine.cli import load_config
from kdengine import Engine, Store

from support import app_test, train_stored

PAGE = "app_pages/boundaries.py"


@pytest.fixture(scope="module")
def stored():
    """A moons BSS run, a moons plain-KD run and a digits BSS run in the session's data folder
    (shared with test_adversarial.py, so the moons teacher is trained once)."""
    return train_stored(os.environ["KD_RUNS_DIR"], {
        "bss": load_config("moons-bss", ["train.epochs=3", "method.params.attack_size=16"]),
        "kd": load_config("moons-2d", ["train.epochs=2", "train.baseline=false"]),
        "digits": load_config("digits-quick", ["train.epochs=1", "teacher.epochs=3"]
                              ).with_overrides({"method.name": "bss", "method.params": {}}),
    }, owner="someone-else")


def _page(run_id: str) -> AppTest:
    return app_test(PAGE, state={"bd_run": run_id}, timeout=90)


def _figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _arr(v) -> list:
    """A plotly array from figure JSON: a plain list, or numpy data sent as base64 ``bdata``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def _boundary_fig(at) -> dict:
    figs = [f for f in _figures(at) if f["layout"].get("images")]
    assert len(figs) == 1
    return figs[0]


def test_2d_run_shows_both_heatmaps_bss_paths_and_similarity(stored):
    at = _page(stored["bss"])
    fig = _boundary_fig(at)
    images = fig["layout"]["images"]       # teacher, student, the (hidden) disagreement map
    assert len(images) == 3 and all(t["source"].startswith("data:image/png") for t in images)
    assert [t["xref"] for t in images] == ["x", "x2", "x3"]
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles[:2] == ["teacher", "student, epoch 3"] and titles[2].startswith("disagreement")
    names = {t.get("name") for t in fig["data"]}
    assert {"BSS path", "base sample", "boundary sample", "class 0", "class 1"} <= names
    path = next(t for t in fig["data"] if t.get("name") == "BSS path")
    assert len(_arr(path["x"])) == 16 * (10 + 2)          # 16 samples x (11 points + a gap)
    # MagSim / AngSim: this run and the plain-KD run on the same data
    sim = [f for f in _figures(at) if f["layout"].get("title", {}).get("text", "").startswith("MagSim")]
    assert len(sim) == 1
    labels = [t["name"] for t in sim[0]["data"]]
    assert labels[0] == "bss · this run" and any(lbl.startswith("plain KD") for lbl in labels)
    assert len(_arr(sim[0]["data"][0]["y"])) == 3
    assert any("boundary-supporting samples" in c.value for c in at.caption)
    # how the two numbers are measured here, beside the paper's, in plain words
    from kdengine.analysis.boundaries import similarity_note
    assert any(similarity_note() in m.value for m in at.markdown)


def _png_rgb(source: str) -> np.ndarray:
    """A layout image's data URL back to (rows from the lowest y, cols, 3) pixels."""
    import io
    from PIL import Image
    raw = base64.b64decode(source.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))[::-1]


def test_epoch_replay_and_disagreement_map_ride_in_the_figure(stored):
    """The slider over epochs and the disagreement switch act in the browser: the figure carries
    one frame per stored epoch, and buttons that show or hide the disagreement panel."""
    from kdengine.analysis.boundaries import dequantise, disagreement, epoch_history
    from ui import boundary_figs as bf
    at = _page(stored["bss"])
    assert not at.slider and "bd_disagree" not in {t.key for t in at.toggle}
    fig = _boundary_fig(at)
    hist = epoch_history(Store(os.environ["KD_RUNS_DIR"]), stored["bss"])
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert [f["name"] for f in fig["frames"]] == ["1", "2", "3"]
    slider = fig["layout"]["sliders"][0]
    assert slider["active"] == 2 and [s["args"][0] for s in slider["steps"]] == [["1"], ["2"], ["3"]]
    # A frame moves scatter traces and swaps layout images and titles only, so it plays without
    # plotly.js's full redraw; the teacher's image and title ({}) are never sent again.
    assert all(s["args"][1]["frame"]["redraw"] is False for s in slider["steps"])
    assert {t["type"] for f in fig["frames"] for t in f["data"]} == {"scatter"}
    assert all(f["layout"]["images"][0] == {} == f["layout"]["annotations"][0] for f in fig["frames"])
    student = lambda f: f["layout"]["images"][1]["source"]  # noqa: E731
    first, last = fig["frames"][0], fig["frames"][-1]
    assert first["layout"]["annotations"][1]["text"] == "student, epoch 1"
    assert student(first) != student(last)
    assert student(last) == student(fig)                   # the figure opens on the newest epoch
    assert fig["layout"]["images"][0]["source"].startswith("data:image/png")      # the teacher
    # The disagreement map: a hidden layout image per epoch, the share of the grid in its title.
    assert fig["layout"]["images"][2]["visible"] is False is fig["layout"]["annotations"][2]["visible"]
    assert fig["layout"]["xaxis3"]["visible"] is False
    eng = Engine(store=Store(os.environ["KD_RUNS_DIR"]), max_workers=1)
    try:
        p_t = dequantise(eng.snapshot(stored["bss"]).artifacts["grid_teacher"]["probs"])
    finally:
        eng.shutdown()
    for h, frame in zip(hist, fig["frames"]):
        tv, share = disagreement(p_t, h["probs"])
        assert f"differs on {share:.0%}" in frame["layout"]["annotations"][2]["text"]
        assert np.array_equal(_png_rgb(frame["layout"]["images"][2]["source"]), bf.disagreement_rgb(tv))
    off, on = fig["layout"]["updatemenus"][0]["buttons"]
    assert on["method"] == off["method"] == "relayout"
    for key in ("xaxis3.visible", "images[2].visible", "annotations[2].visible"):
        assert on["args"][0][key] is True and off["args"][0][key] is False
    at.toggle(key="bd_show_bss").set_value(False).run()
    assert "BSS path" not in {t.get("name") for t in _boundary_fig(at)["data"]}


def test_zero_line_follows_the_level_set():
    """The student's p = 0.5 line is drawn from the grid by marching squares: on a circle's
    distance field every point lies on the circle (to the grid's interpolation), saddles join
    the right corners, and a grid that never crosses 0 gives no line."""
    from ui.boundary_figs import zero_line
    xs = np.linspace(-2, 2, 60)
    X, Y = np.meshgrid(xs, np.linspace(-1, 3, 50))
    pts = zero_line(1 - np.hypot(X, Y - 1), (-2, 2, -1, 3))
    ok = ~np.isnan(pts[:, 0])
    assert ok.sum() > 50 and np.isnan(pts[2::3]).all()               # segments, NaN between
    assert np.abs(np.hypot(pts[ok, 0], pts[ok, 1] - 1) - 1).max() < 0.01
    X, Y = np.meshgrid(np.linspace(-1, 1, 10), np.linspace(-1, 1, 10))
    for eps in (1e-3, -1e-3):                                         # x·y = -eps: two hyperbolas
        pts = zero_line(X * Y + eps, (-1, 1, -1, 1))
        ok = ~np.isnan(pts[:, 0])
        assert np.abs(pts[ok, 0] * pts[ok, 1] + eps).max() < 0.01
    assert zero_line(np.ones((5, 5)), (0, 1, 0, 1)).shape == (0, 2)


def test_disagreement_colours_run_from_grey_to_dark_red():
    from ui.boundary_figs import disagreement_rgb
    rgb = disagreement_rgb(np.array([[0.0, 0.5, 1.0]]))
    assert rgb[0, 0].tolist() == [220, 220, 220] and rgb[0, 2].tolist() == [178, 10, 28]
    assert rgb[0, 0, 2] > rgb[0, 1, 2] > rgb[0, 2, 2]                 # darker with the distance


def test_plain_kd_run_has_heatmaps_but_no_bss(stored):
    at = _page(stored["kd"])
    fig = _boundary_fig(at)
    assert len(fig["layout"]["images"]) == 3
    assert "BSS path" not in {t.get("name") for t in fig["data"]}


def test_image_run_shows_a_gallery_with_class_names(stored):
    at = _page(stored["digits"])
    imgs = at.get("image")
    assert len(imgs) >= 3 and len(imgs) % 3 == 0      # base, boundary sample, difference per row
    captions = [c.value for c in at.caption] + [m.value for m in at.markdown]
    text = " ".join(captions)
    assert "| teacher |" in text and "| student |" in text and "p(" in text
    sim = [f for f in _figures(at) if f["layout"].get("title", {}).get("text", "").startswith("AngSim")]
    assert len(sim) == 1


def test_train_button_starts_a_bss_run_and_selects_it(stored):
    at = app_test(PAGE, timeout=90)
    at.button(key="bd_start").click().run()
    assert not at.exception, at.exception
    rid = at.session_state["bd_run"]
    assert rid not in stored.values()
    from ui.engine import get_engine
    eng = get_engine()
    assert eng.snapshot(rid).config["method"]["name"] == "bss"
    eng.stop(rid)
    end = eng.wait(rid, timeout=60)
    assert end in ("stopped", "done")
    if end == "stopped":                 # a stop by the user is a neutral notice, not an error
        at.run()
        assert not at.error, [e.value for e in at.error]
        assert any("Stopped by you" in i.value for i in at.info)


def test_missing_similarity_names_the_real_reason():
    from kdengine.analysis.boundaries import similarity_absent_reason as why
    hinton_digits = {"data": {"name": "digits"}, "method": {"name": "hinton"}, "train": {}}
    msg = why(hinton_digits, has_teacher=True)
    assert "unless switched on" in msg and "2-D data and for BSS only" in msg
    assert "measure boundary similarity" in msg          # the switch by its name in the Lab
    assert "teacher" not in msg.split("(")[0]            # not "for runs with a teacher"
    off = dict(hinton_digits, train={"boundary_metrics": "off"})
    assert "switched off" in why(off, has_teacher=True)
    assert "no teacher" in why(hinton_digits, has_teacher=False)
    bss_digits = dict(hinton_digits, method={"name": "bss"})
    assert "first epoch" in why(bss_digits, has_teacher=True)


def test_boundary_figure_dict_is_valid_plotly(stored):
    """The page hands plotly a prebuilt dict without validation; validate it here once."""
    import plotly.graph_objects as go
    from kdengine.analysis.boundaries import dequantise
    from ui import boundary_figs as bf
    eng = Engine(store=Store(os.environ["KD_RUNS_DIR"]), max_workers=1)
    try:
        snap = eng.snapshot(stored["bss"])
    finally:
        eng.shutdown()
    a = snap.artifacts
    p_t, p_s = dequantise(a["grid_teacher"]["probs"]), dequantise(a["grid_student"]["probs"])
    pts = np.array([[0.0, 0.0], [1.0, 1.0]])
    for disagree in (False, True):
        d = bf.boundary_figure(p_t, p_s, a["grid_student"]["bounds"], pts, np.array([0, 1]),
                               None, a["bss"], show_disagreement=disagree)
        go.Figure(d)             # raises on any unknown property or bad value
        assert bf.PrebuiltFigure(d).to_dict() is d
    from kdengine.analysis.boundaries import epoch_history
    hist = epoch_history(Store(os.environ["KD_RUNS_DIR"]), stored["bss"])
    for teacher in (p_t, None):
        go.Figure(bf.replay_figure(teacher, hist, pts, np.array([0, 1])))

