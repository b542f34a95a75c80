"""AppTest of the Sweeps and TA-gap pages with real (one-epoch) runs.

``run_every`` fragments do not tick under AppTest, so the live views are polled with ``at.run()``.
"""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from support import app_test, poll


def page(name: str) -> AppTest:
    return app_test(f"app_pages/{name}")


def figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_sweeps_page_fills_a_heatmap_and_exports_csv():
    at = page("sweeps.py")
    at.selectbox(key="sw_preset").set_value("digits-quick").run()
    at.number_input(key="sw_epochs").set_value(1)
    at.text_input(key="sw_xv_method.params.T").set_value("1, 4")
    at.text_input(key="sw_yv_method.params.soft_weight").set_value("0.5, 0.9")
    at.radio(key="sw_backend").set_value("vectorised")
    at.button(key="sw_launch").click().run()
    assert not at.error, [e.value for e in at.error]
    sweep_id = at.session_state["sweep_id"]

    def heat_full(at):
        heat = [f for f in figures(at) if f["data"] and f["data"][0]["type"] == "heatmap"]
        return heat and all(v is not None for row in heat[0]["data"][0]["z"] for v in row)
    poll(at, heat_full, timeout=180)
    heat = next(f for f in figures(at) if f["data"][0]["type"] == "heatmap")["data"][0]
    assert heat["x"] == ["1", "4"] and heat["y"] == ["0.5", "0.9"]
    assert all(0.0 <= v <= 1.0 for row in heat["z"] for v in row)
    run_ids = {c[0] for row in heat["customdata"] for c in row}
    assert len(run_ids) == 4 and "" not in run_ids         # hover (and click) carry the run id
    lines = [f for f in figures(at) if f["data"] and f["data"][0]["type"] == "scatter"]
    assert len(lines) == 2                                   # one line view per knob
    csv = at.get("download_button")
    assert csv, "the grid can be exported as CSV"
    # a bad value is reported on the page, not raised
    at.text_input(key="sw_xv_method.params.T").set_value("-3")
    at.button(key="sw_launch").click().run()
    assert any("temperature T" in e.value for e in at.error)            # the knob by its label
    assert at.session_state["sweep_id"] == sweep_id


def test_ta_gap_page_draws_curves_and_ladder():
    at = page("ta_gap.py")
    at.multiselect(key="ta_sizes_mlp").set_value(["MLP 1x8", "MLP 1x16", "MLP 1x32"]).run()
    at.number_input(key="ta_seeds").set_value(1)
    at.number_input(key="ta_epochs").set_value(1)
    at.button(key="ta_launch").click().run()
    assert not at.error, [e.value for e in at.error]

    def finished(at):
        return any("100%" in (p.proto.text or "") for p in at.get("progress"))
    poll(at, finished, timeout=180)
    curve = figures(at)[0]
    names = {t.get("name") for t in curve["data"]}
    assert {"direct KD", "via TA", "student alone"} <= names
    assert curve["layout"]["xaxis"]["type"] == "log"
    via = next(t for t in curve["data"] if t.get("name") == "via TA" and "lines" in t.get("mode", ""))
    assert "text" not in via.get("mode", "")                 # no labels over the lines
    assert [c[2] for c in via["customdata"]] == ["MLP 1x16"]  # the rule's pick, in the hover
    assert any("TA MLP 1x16" in t for t in curve["layout"]["xaxis"]["ticktext"])   # and under the axis
    ladder = at.dataframe[0].value
    assert list(ladder["size"]) == ["MLP 1x8", "MLP 1x16", "MLP 1x32"]
    assert list(ladder["role"]) == ["student", "TA pick", ""]
    assert ladder["accuracy (scratch)"].notna().all()


def test_sweeps_page_search_mode_marks_pruned_trials_and_links_the_best(monkeypatch):
    at = page("sweeps.py")
    at.selectbox(key="sw_preset").set_value("digits-quick").run()
    at.radio(key="sw_mode").set_value("search").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("validation accuracy" in m.value for m in at.caption)
    assert not at.warning                          # val_acc, with a teacher trained here
    at.selectbox(key="se_metric").set_value("kl_test").run()
    assert any("test set" in w.value for w in at.warning)     # an objective read on the test set
    at.selectbox(key="se_metric").set_value("val_acc").run()
    assert at.multiselect(key="se_knobs").value == ["method.params.T", "method.params.soft_weight"]
    assert at.number_input(key="se_lo_method.params.T").value == 1.0      # from the knob table
    assert at.checkbox(key="se_log_method.params.T").value is True
    # a bad range names the knob, on the page
    at.number_input(key="se_lo_method.params.T").set_value(0.0)
    at.button(key="se_launch").click().run()
    assert any("temperature T" in e.value for e in at.error)            # the knob by its label
    assert "search_id" not in at.session_state
    at.number_input(key="se_lo_method.params.T").set_value(1.0)
    at.number_input(key="se_epochs").set_value(3)
    at.number_input(key="se_trials").set_value(8)
    at.radio(key="se_pruner").set_value("asha")
    at.button(key="se_launch").click().run()
    assert not at.error, [e.value for e in at.error]
    sid = at.session_state["search_id"]

    def finished(at):
        return any("8/8 trials" in (p.proto.text or "") for p in at.get("progress"))
    poll(at, finished, timeout=400)
    figs = figures(at)
    hist = next(f for f in figs if f["layout"]["title"]["text"] == "Optimisation history")
    names = {t.get("name") for t in hist["data"]}
    assert {"complete", "pruned", "best so far"} <= names                # pruned trials marked
    pruned = next(t for t in hist["data"] if t.get("name") == "pruned")
    assert pruned["marker"]["symbol"] == "x"
    titles = {(f["layout"].get("title") or {}).get("text") for f in figs}
    assert titles & {"Contour Plot", "Slice Plot"}                        # plus Optuna's plots
    table = at.dataframe[0].value
    assert len(table) == 8 and (table["state"] == "pruned").any()
    link = next(m.value for m in at.markdown if "Open in Lab" in m.value)  # the page alone: a URL
    assert "method.params.T=" in link and "data.val_fraction=0.2" in link
    assert at.session_state["search_id"] == sid
