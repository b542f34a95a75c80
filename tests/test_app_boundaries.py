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

from conftest import app_test, train_stored

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
    images = fig["layout"]["images"]
    assert len(images) == 2 and all(t["source"].startswith("data:image/png") for t in images)
    assert [t["xref"] for t in images] == ["x", "x2"]
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == ["teacher", "student, epoch 3"]
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


def test_disagreement_toggle_and_epoch_slider(stored):
    at = _page(stored["bss"])
    latest = _boundary_fig(at)
    at.toggle(key="bd_disagree").set_value(True).run()
    fig = _boundary_fig(at)
    assert len(fig["layout"]["annotations"]) == 3
    assert fig["layout"]["annotations"][2]["text"].startswith("disagreement")
    assert any(t["type"] == "heatmap" for t in fig["data"])
    at.toggle(key="bd_disagree").set_value(False).run()
    assert not at.slider            # following the latest epoch: no slider
    at.toggle(key="bd_follow").set_value(False).run()
    assert at.slider(key="bd_epoch").value == 3
    at.slider(key="bd_epoch").set_value(1).run()
    assert not at.exception
    old = _boundary_fig(at)
    assert old["layout"]["annotations"][1]["text"] == "student, epoch 1"
    student = lambda f: f["layout"]["images"][1]["source"]  # noqa: E731
    teacher = lambda f: f["layout"]["images"][0]["source"]  # noqa: E731
    assert student(old) != student(latest) and teacher(old) == teacher(latest)
    at.run()                        # a rerun keeps the chosen epoch
    assert at.slider(key="bd_epoch").value == 1
    at.toggle(key="bd_show_bss").set_value(False).run()
    assert "BSS path" not in {t.get("name") for t in _boundary_fig(at)["data"]}


def test_plain_kd_run_has_heatmaps_but_no_bss(stored):
    at = _page(stored["kd"])
    fig = _boundary_fig(at)
    assert len(fig["layout"]["images"]) == 2
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
    assert eng.snapshot(rid)["config"]["method"]["name"] == "bss"
    eng.stop(rid)
    assert eng.wait(rid, timeout=60) in ("stopped", "done")


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
    a = snap["artifacts"]
    p_t, p_s = dequantise(a["grid_teacher"]["probs"]), dequantise(a["grid_student"]["probs"])
    pts = np.array([[0.0, 0.0], [1.0, 1.0]])
    for disagree in (False, True):
        d = bf.boundary_figure(p_t, p_s, a["grid_student"]["bounds"], pts, np.array([0, 1]),
                               None, a["bss"], show_disagreement=disagree)
        go.Figure(d)             # raises on any unknown property or bad value
        assert bf.PrebuiltFigure(d).to_dict() is d

