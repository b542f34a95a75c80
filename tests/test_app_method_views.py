"""AppTest of the Method views page (Sobolev field on moons, specialists' clusters on digits), and
the figure builders against the stored artifacts."""
from __future__ import annotations

import json

import pytest

from kdengine import RunConfig

from support import app_test, data_folder, train_stored


def cfg(data: str, method: str, params: dict) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": data, "n_samples": 300},
        "teacher": {"model": {"arch": "mlp", "depth": 2, "width": 32}, "epochs": 3},
        "student": {"arch": "mlp", "depth": 1, "width": 8},
        "method": {"name": method, "params": params},
        "train": {"epochs": 1, "log_every": 5}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with data_folder(tmp_path_factory.mktemp("method_views")) as root:
        yield train_stored(root, {
            "sobolev": cfg("moons", "sobolev", {"k": 1}),
            "specialists": cfg("digits", "specialists", {
                "specialist_epochs": 2, "n_specialists": 2, "combine_steps": 10})}, owner="")


def figure(at, key: str) -> dict:
    charts = [c for c in at.get("plotly_chart")]
    assert charts, f"no chart for {key}"
    return json.loads(charts[0].proto.spec)


def test_sobolev_field_and_specialist_clusters_are_drawn(runs):
    at = app_test(page="app_pages/method_views.py")

    at.selectbox(key="mv_run").set_value(runs["sobolev"]).run()
    assert not at.exception, [e.value for e in at.exception]
    fig = figure(at, "sobolev")
    kinds = [t["type"] for t in fig["data"]]
    assert kinds.count("heatmap") == 2 and kinds.count("scatter") == 2   # teacher + student
    arrows = fig["data"][1]
    assert len(arrows["x"]) == 3 * 21 * 21                                 # a segment per grid point
    at.selectbox(key="mv_class").set_value(1).run()
    assert "class 1" in figure(at, "sobolev")["layout"]["title"]["text"]
    # the method's loss as formula and code (ui/code_panel.py)
    assert any(c.value.startswith("def loss_terms") for c in at.code)
    assert at.get("latex")

    at.selectbox(key="mv_run").set_value(runs["specialists"]).run()
    assert not at.exception, [e.value for e in at.exception]
    fig = figure(at, "specialists")
    assert fig["data"][0]["type"] == "heatmap" and len(fig["data"][0]["z"]) == 10
    assert len(fig["layout"]["shapes"]) == 2                                # one box per specialist
    labels = {m.label for m in at.metric}
    assert {"generalist test acc.", "generalist + specialists"} <= labels


def test_specialists_figure_groups_each_cluster_into_a_block():
    from ui.method_figs import specialists_figure
    art = {"class_names": list("abcd"), "clusters": [[3, 1]],
           "soft_confusion": [[float(10 * r + c) for c in range(4)] for r in range(4)]}
    fig = specialists_figure(art)
    assert list(fig.data[0].x) == ["d", "b", "a", "c"]          # the cluster first, in its order
    assert fig.data[0].customdata[0][1] == 31.0                 # row d, column b: conf[3][1]
    assert fig.data[0].z[0][0] is None                          # the diagonal is left blank
    box = fig.layout.shapes[0]
    assert (box.x0, box.x1) == (-0.5, 1.5)
