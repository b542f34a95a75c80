"""The running code on the page: the Lab's panel shows the chosen method's formula and the source of
its ``loss_terms`` as the method's file has it, and its term names bring that term's live chart to
the top (ui/code_panel.py, kdengine/core/code.py). The Runs page offers the run as a notebook."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap


from kdengine import get_method_class, method_names, method_source, term_names

from support import app_test, data_folder, lab, poll, status_line, train_stored


def panel(at, method: str):
    [exp] = [e for e in at.expander if e.label == f"The loss in code: {method}"]
    return exp


def test_lab_panel_shows_each_methods_formula_and_loss_terms_code():
    at = lab()
    for method in method_names():            # switched in the page, as a user does
        at.selectbox(key="lab.method.name").set_value(method).run()
        assert not at.exception, (method, [e.value for e in at.exception])
        exp = panel(at, method)
        cls = get_method_class(method)
        assert cls.formula, f"{method} has no formula"
        assert [x.value for x in exp.get("latex")] == [f"$$\n{cls.formula}\n$$"]
        [code] = exp.code
        assert code.value.strip() == method_source(cls).strip(), method
        assert code.value.startswith("def loss_terms") and code.language == "python"
        # every term the code names has a button; with no run of this method shown they are off
        keys = {b.key for b in exp.button}
        assert {f"lab_term_{t}" for t in term_names(cls)} <= keys, method
        assert all(b.disabled for b in exp.button)


def test_term_names_are_the_ones_the_code_returns():
    assert term_names(get_method_class("hinton")) == ["kd", "ce"]
    assert term_names(get_method_class("dkd")) == ["tckd", "nckd", "ce"]
    assert term_names(get_method_class("bss")) == ["kd", "bss", "ce"]      # assigned, not declared
    assert term_names(get_method_class("fitnet_mdistiller")) == ["hint", "ce"]


def test_a_method_with_its_own_loss_has_its_own_formula():
    """A subclass that changes loss_terms states its loss too: an inherited formula would show terms
    its code does not compute (fitnet_mdistiller has no KD term)."""
    for method in method_names():
        cls = get_method_class(method)
        if "loss_terms" in vars(cls):
            assert "formula" in vars(cls), f"{method} inherits {cls.__mro__[1].__name__}'s formula"
    assert "KL" not in get_method_class("fitnet_mdistiller").formula


def test_a_copied_or_edited_method_file_shows_its_own_code(tmp_path):
    """The panel reads the file the method class was loaded from, again when it changes."""
    path = tmp_path / "my_kd.py"
    path.write_text(textwrap.dedent('''
        from kdengine.methods.hinton import HintonKD

        class MyKD(HintonKD):
            def loss_terms(self, batch, step):
                return {"kd": super().loss_terms(batch, step)["kd"] * 2}

        class Plain(HintonKD):
            pass
    '''))
    spec = importlib.util.spec_from_file_location("my_kd", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_kd"] = mod
    try:
        spec.loader.exec_module(mod)
        assert "* 2" in method_source(mod.MyKD)
        assert method_source(mod.Plain) == method_source(get_method_class("hinton"))   # inherited
        path.write_text(path.read_text().replace("* 2", "* 3"))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a later edit, same second
        assert "* 3" in method_source(mod.MyKD)
        assert term_names(mod.MyKD) == ["kd", "ce"]
    finally:
        sys.modules.pop("my_kd", None)


def charts_in_order(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_term_buttons_bring_that_terms_live_chart_first():
    at = lab({"preset": "digits-quick", "train.epochs": "1"})
    at.button(key="lab_train").click().run()
    poll(at, lambda a: "**done**" in status_line(a) or "**failed**" in status_line(a))
    assert "**done**" in status_line(at), status_line(at)
    exp = panel(at, "hinton")
    assert not exp.button(key="lab_term_ce").disabled
    def first_loss_chart():
        return [t for t in charts_in_order(at) if t.startswith("loss term")][0]
    assert first_loss_chart() == "loss term: ce"                 # the usual order: by name
    exp.button(key="lab_term_kd").click().run()
    assert first_loss_chart() == "loss term: kd"
    assert any("The term **kd** from the code above" in c.value for c in at.caption)
    assert panel(at, "hinton").button(key="lab_term_kd").proto.type == "primary"
    panel(at, "hinton").button(key="lab_term_none").click().run()
    assert first_loss_chart() == "loss term: ce"
    # the Lab offers the current run as a notebook
    [nb] = [b for b in at.get("download_button") if b.proto.id.endswith("lab_notebook")
            or "lab_notebook" in b.proto.id]
    assert not nb.proto.disabled


def test_runs_page_offers_the_notebook_and_says_why_not(tmp_path):
    from kdengine import RunConfig
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "student": {"depth": 1, "width": 8},
                               "teacher": {"model": {"depth": 1, "width": 16}, "epochs": 1},
                               "method": {"name": "hinton"}, "train": {"epochs": 1}})
    with data_folder(tmp_path):
        ids = train_stored(tmp_path, {"kd": cfg}, owner="")
        at = app_test(page="app_pages/runs.py", state={"runs_everyone": True})
        at.toggle(key="runs_everyone").set_value(True).run()
        at.multiselect(key="runs_sel").set_value([ids["kd"]]).run()
        assert not at.exception, [e.value for e in at.exception]
        [b] = [b for b in at.get("download_button") if "runs_notebook" in b.proto.id]
        assert not b.proto.disabled and ids["kd"][-6:] in b.proto.label
    from ui.take_home import _problem
    text = {"data": {"name": "text"}, "teacher": {"model": {"arch": "transformer"}},
            "student": {"arch": "transformer"}, "method": {"name": "distilbert"}}
    assert "text task" in _problem(json.dumps(text))
