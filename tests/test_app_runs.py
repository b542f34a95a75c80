"""AppTest of the Runs page: table, overlay, export buttons, open in Lab, delete and prune (each
with its confirmation; a student only their own runs, the instructor any). Uses its own data
folder, since deleting and pruning are the point."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from kdengine import RunConfig, Store

from support import app_test, data_folder, train_stored


def tiny(T: float) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 64}, "epochs": 2},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": "hinton", "params": {"T": T}},
        "train": {"epochs": 2, "log_every": 5}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with data_folder(tmp_path_factory.mktemp("runs_page")) as root:
        ids = train_stored(root, {f"T{T:g}": tiny(T) for T in (2.0, 6.0, 9.0)}, named=True)
        yield list(ids.values()), Store(root)


TOKEN = "runs-page-token"


@pytest.fixture(autouse=True)
def _instructor_token(monkeypatch):
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", TOKEN)


def page(query: dict | None = None) -> AppTest:
    at = app_test(page="app_pages/runs.py", query=query)
    assert not at.dataframe                     # by default only this session's runs: none yet
    at.toggle(key="runs_everyone").set_value(True).run()      # the runs of "someone"
    return at


def test_runs_table_overlay_and_export(runs):
    ids, _ = runs
    at = page()
    table = at.dataframe[0].value
    assert set(ids) <= set(table["id"]) and set(table["T"]) >= {2.0, 6.0, 9.0}
    assert {"method", "weights", "teacher", "student", "test accuracy", "status"} <= set(table.columns)
    assert list(table.columns[:4]) == ["name", "method", "status", "test accuracy"]
    assert set(at.multiselect(key="runs_sel").value) == set(ids)      # newest finished, up to 3
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(fig["data"]) == 3 and fig["layout"]["xaxis"]["title"]["text"] == "epoch"
    at.selectbox(key="runs_metric").set_value("loss/kd").run()
    assert "loss term: kd" in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    labels = {b.label for b in at.get("download_button")}
    first = at.multiselect(key="runs_sel").value[0]
    assert labels == {"Export CSV", "Export JSON", f"Notebook of {first[-6:]} to take home"}


def test_open_in_lab_loads_the_stored_config(runs):
    ids, store = runs
    at = page()
    at.multiselect(key="runs_sel").set_value([ids[1]]).run()
    at.button(key="runs_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="lab.mp.hinton.T").value == 6.0
    assert at.number_input(key="lab.teacher.epochs").value == 2
    # The preset box no longer names a preset, and the run shown below is the one opened.
    assert at.selectbox(key="lab_preset").value == "(your setup)"
    assert at.session_state["lab_run"] == ids[1]
    assert any(f"`{ids[1]}`" in m.value for m in at.markdown)


def test_a_run_link_selects_that_run(runs):
    """Sweeps heatmap cells link to ?run=<id>: the Runs page opens with that run selected."""
    ids, _ = runs
    at = app_test(page="app_pages/runs.py", query={"run": ids[0]})
    assert at.multiselect(key="runs_sel").value == [ids[0]]
    at.query_params["run"] = "no-such-run"
    at.run()
    assert any("no-such-run" in w.value for w in at.warning)


def test_a_student_sees_the_class_runs_but_deletes_and_prunes_only_her_own(runs):
    ids, store = runs
    at = page()                                  # a student: the runs are "someone"'s
    at.multiselect(key="runs_sel").set_value([ids[0], ids[1]]).run()
    assert not any(b.key == "runs_delete" for b in at.button)      # nothing of hers to delete
    assert any("2 of the selected runs belong to other students" in c.value for c in at.caption)
    assert any(e.label == "Prune my old runs" for e in at.expander)
    at.number_input(key="runs_keep").set_value(0).run()
    at.button(key="runs_prune").click().run()
    assert any("of yours" in w.value for w in at.warning)
    at.button(key="runs_confirm_prune_yes").click().run()
    assert any("Deleted 0" in s.value for s in at.success)
    assert all(store.get_run(i) is not None for i in ids)          # nothing of the others' lost


def test_delete_asks_first_then_deletes(runs):
    ids, store = runs
    at = page({"tok": TOKEN})                    # the instructor may delete anyone's run
    at.multiselect(key="runs_sel").set_value([ids[0]]).run()
    at.button(key="runs_delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert store.get_run(ids[0]) is not None                      # nothing gone before confirming
    at.button(key="runs_confirm_delete_no").click().run()
    assert store.get_run(ids[0]) is not None
    at.button(key="runs_delete").click().run()
    at.button(key="runs_confirm_delete_yes").click().run()
    assert store.get_run(ids[0]) is None and not store.checkpoint_path(ids[0]).exists()
    assert ids[0] not in set(at.dataframe[0].value["id"])


def test_prune_keeps_the_newest(runs):
    ids, store = runs
    at = page({"tok": TOKEN})
    at.number_input(key="runs_keep").set_value(1).run()
    at.button(key="runs_prune").click().run()
    at.button(key="runs_confirm_prune_yes").click().run()
    assert [r["id"] for r in store.list_runs()] == [ids[2]]
    assert any("Deleted 1" in s.value for s in at.success)

