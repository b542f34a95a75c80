"""Soft-target explorer: identities of kdengine.analysis.soft_targets, and AppTest of the page on a finished run
and on a live (paused) one."""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from kdengine.analysis import soft_targets as explore
from kdengine.cli import load_config
from kdengine import Engine, Store

from support import app_test, train_stored


# -- kdengine.analysis.soft_targets (pure) ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_dkd_identity_holds_per_sample(seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(10, generator=g) * 3, torch.randn(10, generator=g) * 3
    for T in (0.5, 1.0, 4.0, 20.0):
        d = explore.dkd_identity(s, t, target=seed % 10, T=T)
        assert d["kl"] == pytest.approx(d["rhs"], rel=1e-9, abs=1e-12)
        assert d["tckd"] >= 0 and d["nckd"] >= 0 and 0 < d["p_t"] < 1
        assert d["p_t"] == pytest.approx(explore.softmax_T(t, T)[seed % 10])


def test_entropy_rises_with_T_towards_log_classes():
    z = torch.tensor([6.0, 2.0, 1.0, -1.0, 0.5])
    Ts = explore.temperature_grid()
    H = explore.entropy_curve(z, Ts)
    assert np.all(np.diff(H) > 0) and H[-1] < np.log(5) and H[-1] > 0.95 * np.log(5)
    assert explore.softmax_T(z, 3.0).sum() == pytest.approx(1.0)


def test_wrong_classes_ranked_excludes_target_and_sorts_by_teacher():
    pt = np.array([0.7, 0.05, 0.2, 0.05])
    ps = np.array([0.4, 0.3, 0.2, 0.1])
    rows = explore.wrong_classes_ranked(pt, ps, target=0, class_names=list("abcd"))
    assert [r["name"] for r in rows][0] == "c" and all(r["class"] != 0 for r in rows)
    assert sum(r["share_of_wrong_mass"] for r in rows) == pytest.approx(1.0)


# -- the page ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished():
    return train_stored(os.environ["KD_RUNS_DIR"],
                        {"quick": load_config("digits-quick", ["train.epochs=1"])})["quick"]


def page(query: dict, everyone: bool = False) -> AppTest:
    # by default only this session's runs are listed; ``everyone`` turns the toggle on
    return app_test(page="app_pages/soft_targets.py", query=query,     # a direct link
                    state={"st_everyone": True} if everyone else None)


def figure(at: AppTest) -> dict:
    """The page's one figure: bars, entropy, ranking and DKD's identity, a frame per slider T."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if s.get("frames"))


def identity_numbers(annotations: list[dict]) -> list[float]:
    line = next(a["text"] for a in annotations if a["text"].startswith("<b>KD = TCKD"))
    return [float(x) for x in re.findall(r"\d+\.\d+", line.split("</b>", 1)[1])]


def test_soft_targets_figure_carries_every_T_for_the_browser_slider(finished):
    at = page({"run": finished, "i": "3", "T": "4.0"})
    assert at.session_state["st_run"] == finished and at.session_state["st_i"] == 3
    assert "st_T" not in {w.key for w in at.slider}          # T moves in the browser, not here
    fig = figure(at)
    Ts = explore.slider_temperatures()
    assert [f["name"] for f in fig["frames"]] == [f"{T:g}" for T in Ts]
    slider = fig["layout"]["sliders"][0]
    assert [s["args"][0] for s in slider["steps"]] == [[f"{T:g}"] for T in Ts]
    assert all(s["method"] == "animate" for s in slider["steps"])
    assert Ts[slider["active"]] == 4.0
    assert [t["name"] for t in fig["data"][:2]] == ["teacher", "student"]
    # Each frame's numbers are the explorer's at that T, and its printed identity adds up.
    import kdengine
    models = kdengine.load_run_models(Store(os.environ["KD_RUNS_DIR"]), finished)
    for T, frame in zip(Ts, fig["frames"]):
        if T not in (0.5, 4.0, 12.0, 20.0):
            continue
        view = explore.sample_view(models, 3, T)
        assert frame["data"][0]["y"] == pytest.approx(list(view["p_teacher"]))
        assert frame["data"][1]["y"] == pytest.approx(list(view["p_student"]))
        assert frame["data"][2]["x"] == [T, T]                      # the entropy marker
        kl, tckd, pt, nckd = identity_numbers(frame["layout"]["annotations"])[:4]
        assert kl == pytest.approx(tckd + (1 - pt) * nckd, abs=2e-4)
        assert kl == pytest.approx(view["dkd"]["kl"], abs=1e-4)
        assert f"T = {T:g}" in frame["layout"]["annotations"][0]["text"]
        # the link in the figure follows the slider (the address bar keeps the opening T),
        # and is for someone else: no session id
        assert f'href="?run={finished}&i=3&T={T:g}"' in frame["layout"]["annotations"][0]["text"]
        assert len(frame["data"][3]["y"]) == 9                        # the 9 wrong classes
    assert fig["frames"][0]["data"][0]["y"] != fig["frames"][-1]["data"][0]["y"]
    assert at.query_params["T"] == "4.0" and at.query_params["i"] == "3"
    at.button(key="st_pick_0").click().run()             # a thumbnail in the image grid
    assert at.session_state["st_i"] == 0
    assert figure(at)["frames"][0]["data"][0]["y"] != fig["frames"][0]["data"][0]["y"]


def test_soft_targets_bad_url_values_get_a_notice(finished):
    at = page({"run": "no-such-run", "T": "99", "i": "x"}, everyone=True)
    notice = " ".join(w.value for w in at.warning)
    assert "run" in notice and "temperature T" in notice and "sample:" in notice   # in words
    assert at.session_state["st_T"] == 4.0                     # the run's own T
    fig = figure(at)
    assert explore.slider_temperatures()[fig["layout"]["sliders"][0]["active"]] == 4.0
    assert not at.error


def test_soft_targets_reads_a_live_run_from_its_checkpoint():
    eng = Engine(store=Store(os.environ["KD_RUNS_DIR"]), max_workers=1)
    try:
        cfg = load_config("digits-quick", ["train.epochs=400"])
        rid = eng.submit(cfg, owner="someone")
        ck = eng.store.checkpoint_path(rid)
        end = time.monotonic() + 120
        while not ck.exists() and time.monotonic() < end:
            time.sleep(0.1)
        eng.pause(rid)
        assert eng.wait_for(rid, "paused", timeout=60)
        at = page({"run": rid})
        assert any("live run" in c.value for c in at.caption)
        assert any("after epoch" in c.value for c in at.caption)
        assert len(at.latex) == 1 and figure(at)["frames"] and not at.error
    finally:
        eng.shutdown()


def test_only_this_sessions_runs_unless_everyones_are_asked_for(finished):
    mine = page({})
    assert mine.session_state["st_run"] is None                 # "someone"'s run is not listed
    assert not mine.toggle(key="st_everyone").value
    everyone = page({}, everyone=True)
    assert everyone.session_state["st_run"] is not None
    linked = page({"run": finished})                            # a shared link still opens it
    assert linked.session_state["st_run"] == finished
