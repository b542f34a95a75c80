"""Plain words for students: no commands, file names, config keys or raw metric keys in anything a
student sees. Every page is drawn with AppTest as a student (no instructor token), on an empty data
folder and again with stored runs; every lesson is drawn with its answer shown. The visible text of
each page is collected from the element protos (titles, markdown, captions, notices, widget labels,
help and options, metrics, tab and expander labels, table columns) and from its plotly figures (titles,
axis titles, legend names, annotations, colour-bar titles, hover templates). The chart builders the
pages only draw with a sweep or a TA-gap experiment are checked on small made-up results, and so are
the engine's notices, the data notes and the pitfall warnings shown in the Lab.
"""
from __future__ import annotations

import json
import re

import pytest
from google.protobuf.json_format import MessageToDict

from kdengine import RunConfig, load_lessons
from ui.nav import PAGES

from support import app_test, data_folder, train_stored

# What a student must never read, and why it is there when it is.
FORBIDDEN = {
    "a command": re.compile(r"\bpython[0-9.]* "),
    "a developer script": re.compile(r"\bbench/"),
    "a file name": re.compile(r"\.(?:py|yaml|yml)\b"),
    "the data folder": re.compile(r"\bkd_runs\b"),
    "a config key": re.compile(r"\b(?:method\.params|train|data|teacher|student)\.[A-Za-z_]\w*"),
    "a raw metric key": re.compile(r"\b(?:\w*test_acc|\w*train_acc|val_acc|final_\w+|kl_test|"
                                   r"elapsed_s|epoch_s|test_f1|test_exact)\b|\bloss/"),
}


def _config_classes() -> list:
    import kdengine.core.config as c
    from kdengine.methods import get_method_class, method_names
    return ([c.DataConfig, c.TeacherConfig, c.ModelConfig, c.TrainConfig, c.MethodConfig]
            + [get_method_class(m).Params for m in method_names()])


def _field_names() -> list[str]:
    """Config field names a student would read as code: those with an underscore."""
    from kdengine import field_specs
    return sorted({s["name"] for cls in _config_classes() for s in field_specs(cls) if "_" in s["name"]})


FORBIDDEN["a config field name"] = re.compile(r"\b(?:" + "|".join(_field_names()) + r")\b")
# Proto fields that carry words (ids, icons, formats and data are not read by a student).
TEXT_FIELDS = {"label", "help", "body", "options", "placeholder", "text", "caption", "codeText",
               "delta", "title"}
OWNER = "0123456789ab"           # a valid owner id (ui/engine.py): the pages show its runs


def problems(text: str) -> list[str]:
    return [f"{why}: {m.group(0)!r} in {text[max(0, m.start() - 60):m.end() + 40]!r}"
            for why, rx in FORBIDDEN.items() for m in rx.finditer(text)]


def _strings(d, keys=TEXT_FIELDS):
    """Every string under one of ``keys`` in a proto's dict form."""
    if isinstance(d, dict):
        for k, v in d.items():
            if k in keys:
                yield from _all_strings(v)
            elif isinstance(v, (dict, list)):
                yield from _strings(v, keys)
    elif isinstance(d, list):
        for v in d:
            yield from _strings(v, keys)


def _all_strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _all_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _all_strings(x)


def figure_text(fig: dict) -> list[str]:
    """The words of a plotly figure: titles, axis and colour-bar titles, legend names, annotations,
    slider and button labels, hover templates (without their %{...} placeholders)."""
    out = []
    layouts = [fig.get("layout", {})] + [f.get("layout", {}) for f in fig.get("frames", [])]
    traces = list(fig.get("data", [])) + [t for f in fig.get("frames", []) for t in f.get("data", [])]

    def title(t):
        return t.get("text", "") if isinstance(t, dict) else (t or "")
    for lay in layouts:
        out.append(title(lay.get("title")))
        for k, v in lay.items():
            if re.match(r"^[xy]axis\d*$", k) and isinstance(v, dict):
                out.append(title(v.get("title")))
                out += [str(t) for t in v.get("ticktext", [])]
            if k == "coloraxis" and isinstance(v, dict):
                out.append(title(v.get("colorbar", {}).get("title")))
        out += [a.get("text", "") for a in lay.get("annotations", [])]
        out += [s.get("label", "") for sl in lay.get("sliders", []) for s in sl.get("steps", [])]
        out += [s.get("currentvalue", {}).get("prefix", "") for s in lay.get("sliders", [])]
        out += [b.get("label", "") for m in lay.get("updatemenus", []) for b in m.get("buttons", [])]
    for t in traces:
        out.append(str(t.get("name") or ""))
        out.append(title(t.get("colorbar", {}).get("title")) if isinstance(t.get("colorbar"), dict) else "")
        out.append(re.sub(r"%\{[^}]*\}", "", str(t.get("hovertemplate") or "")))
    return [s for s in out if s]


def _method_code() -> set[str]:
    """The code panel's code (ui/code_panel.py): a method's loss_terms, shown as code on purpose;
    the words around it are checked like any others."""
    from kdengine import get_method_class, method_names, method_source
    return {method_source(get_method_class(m)).strip() for m in method_names()}


def visible_text(at) -> list[str]:
    """Everything a page run shows in words (main area and sidebar)."""
    out = []
    code = _method_code()
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        if type(node).__name__ == "Code" and node.value.strip() in code:
            continue
        d = MessageToDict(proto)
        if "spec" in d:                                   # a plotly chart
            out += figure_text(json.loads(d["spec"]))
            continue
        if type(node).__name__ == "Dataframe":
            out += [str(c) for c in node.value.columns]
            cols = d.get("columns")                       # column_config: headers and help
            out += list(_all_strings(json.loads(cols))) if cols else []
            continue
        out += list(_strings(d))
    return [s for s in out if s]


def assert_plain(texts, where: str) -> None:
    found = [p for t in texts for p in problems(t)]
    assert not found, f"{where}:\n" + "\n".join(dict.fromkeys(found))


# -- the patterns themselves ----------------------------------------------------------------------
def test_the_checker_catches_what_it_is_for():
    for bad in ("run `python bench/phenomena.py`", "see assets/lessons/1-why.md or a.yaml",
                "train.boundary_metrics = auto", "method.params.T", "final_test_acc by run",
                "loss/kd", "validation (val_acc)", "stored in ./kd_runs/", "ce_weight forced to 0"):
        assert problems(bad), bad
    for fine in ("temperature T", "test accuracy", "the student. Then", "Python is a language",
                 "T = 4, soft weight 0.9", "the teacher trains first."):
        assert not problems(fine), fine


def test_every_knobs_label_and_help_speak_plainly():
    """What the Lab draws for any method or config field: its label and its help. (The method's
    name is drawn from the Lab's own words; its help is the command line's.)"""
    from kdengine import MethodConfig, field_specs
    from ui.widgets import label_of
    texts = [t for cls in _config_classes() if cls is not MethodConfig for spec in field_specs(cls)
             for t in (label_of(spec), spec.get("help") or "")]
    assert_plain(texts, "knob labels and help")


# -- pages ------------------------------------------------------------------------------------------
STUDENT_PAGES = [f for f, _, _ in PAGES]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A digits run (50 labels, class 3 left out, student alone for comparison) and a moons BSS run
    of one owner, in a data folder of their own."""
    digits = RunConfig.from_dict({
        "data": {"name": "digits", "transfer": "labels", "n_labels": 100, "omit_class": 3},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 32}, "epochs": 2},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": "hinton", "params": {"T": 4.0}},
        "train": {"epochs": 1, "log_every": 5, "baseline": True}})
    moons = RunConfig.from_dict({
        "data": {"name": "moons", "n_samples": 300},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 2, "width": 32}, "epochs": 5},
        "student": {"arch": "mlp", "depth": 1, "width": 8},
        "method": {"name": "bss", "params": {"attack_size": 8, "attack_steps": 3}},
        "train": {"epochs": 2, "log_every": 5}})
    with data_folder(tmp_path_factory.mktemp("words")) as root:
        yield train_stored(root, {"digits": digits, "moons": moons}, owner=OWNER)


@pytest.mark.parametrize("path", STUDENT_PAGES)
def test_every_page_speaks_plainly_with_no_runs(path, runs_dir):
    at = app_test(path)
    assert_plain(visible_text(at), path)


def test_pages_with_runs_speak_plainly(stored):
    sid = {"sid": OWNER}
    seen = []
    for rid in stored.values():
        at = app_test(query=sid, state={"lab_run": rid})                   # the Lab's live panel
        assert any(c.startswith("accuracy") for c in _figure_titles(at))
        seen.append(("Lab", visible_text(at)))
        at = app_test("app_pages/soft_targets.py", query={**sid, "run": rid})
        seen.append(("Soft targets", visible_text(at)))
        at = app_test("app_pages/boundaries.py", query=sid, state={"bd_run": rid})
        seen.append(("Boundaries", visible_text(at)))
    at = app_test("app_pages/dark_knowledge.py", query=sid)
    assert at.get("plotly_chart")
    seen.append(("Dark knowledge", visible_text(at)))
    at = app_test("app_pages/runs.py", query=sid)
    at.selectbox(key="runs_metric").set_value("loss/kd").run()
    seen.append(("Runs", visible_text(at)))
    assert_plain([f"{where}: {t}" for where, texts in seen for t in texts], "pages with runs")


def _figure_titles(at) -> list[str]:
    out = []
    for c in at.get("plotly_chart"):
        t = json.loads(c.proto.spec)["layout"].get("title", {})
        out.append(t.get("text", "") if isinstance(t, dict) else t)
    return out


def test_a_bad_value_is_named_in_words(runs_dir):
    """A refused link value and a value out of range in the Lab name the knob by its label."""
    at = app_test(query={"method.params.T": "-1"})
    texts = visible_text(at)
    assert_plain(texts, "Lab with a bad link value")
    assert any("temperature T" in t and "> 0" in t for t in texts), texts
    at.number_input(key="lab.mp.hinton.T").set_value(-1.0).run()
    texts = visible_text(at)
    assert_plain(texts, "Lab with a bad value")
    assert any("temperature T must be > 0" in t for t in texts)


def test_the_sweeps_and_search_forms_speak_plainly(runs_dir):
    at = app_test("app_pages/sweeps.py")
    assert_plain(visible_text(at), "Sweeps (grid)")
    at.radio(key="sw_mode").set_value("search").run()
    assert_plain(visible_text(at), "Sweeps (search)")


@pytest.mark.parametrize("lesson", load_lessons(), ids=lambda l: l.id)
def test_every_lesson_speaks_plainly(lesson, runs_dir):
    from kdengine import ClassState
    ClassState(runs_dir).reveal(lesson.id)        # an answer waits for the instructor to reveal it
    at = app_test("app_pages/lessons.py", query={"lesson": lesson.id})
    at.button(key="lessons_show").click().run()
    texts = visible_text(at)
    assert lesson.answer[:30] in " ".join(texts)
    assert_plain(texts, f"lesson {lesson.id}")
    # nowhere a student cannot go: the Instructor page is behind the token
    assert not [t for t in texts if "Instructor" in t], lesson.id


# -- what the pages draw only with a sweep or an experiment ----------------------------------------
def test_sweep_and_ta_gap_figures_speak_plainly():
    from ui.charts import overlay_figure
    from ui.search_charts import history_figure
    from ui.sweep_charts import heatmap_figure, knob_lines_figure, ladder_figure, ta_gap_figure
    x, y = "method.params.T", "train.optimizer"
    rows = [{x: T, y: o, "status": "done", "final_test_acc": 0.9, "baseline_test_acc": 0.8,
             "final_agreement": 0.9, "teacher_test_acc": 0.95, "run_id": "r"}
            for T in (1.0, 4.0) for o in ("sgd", "adam")]
    figs = [heatmap_figure(rows, x, y, "final_test_acc", [1.0, 4.0], ["sgd", "adam"]),
            heatmap_figure(rows, x, y, "final_agreement", [1.0, 4.0], ["sgd", "adam"]),
            knob_lines_figure(rows, x, y, "final_test_acc", [1.0, 4.0], ["sgd", "adam"]),
            overlay_figure([("a", [1], [0.5])], "test_acc"),
            overlay_figure([("a", [1], [0.5])], "loss/kd"),
            history_figure([{"trial": 0, "state": "complete", "value": 0.9, "run_id": "r",
                             "epochs": 2}], "val_acc")]
    curve = {"teacher": "MLP 1x64", "teacher_params": 5000, "ta": "MLP 1x16"}
    res = {"student": "MLP 1x8",
           "curves": [{**curve, **{k: 0.5 for k in ("alone", "direct", "via_ta")},
                       **{f"{k}_sd": 0.01 for k in ("alone", "direct", "via_ta")}}],
           "ladder": [{"size": "MLP 1x8", "params": 600, "scratch_acc": 0.5, "scratch_sd": 0.01,
                       "role": "student"}]}
    figs += [ta_gap_figure(res), ladder_figure(res)]
    for f in figs:
        assert_plain(figure_text(f.to_plotly_json()), f.layout.title.text)


# -- what the engine says to a run's owner ---------------------------------------------------------
def test_data_notes_run_notices_and_pitfall_warnings_speak_plainly(runs_dir):
    from kdengine import Notice, lint, list_presets, load_data, load_preset
    from kdengine.run.trainer import Trainer
    events = []                     # a run's notices: teacher, no labels, student alone, the gap
    Trainer(RunConfig.from_dict({
        "data": {"name": "digits", "transfer": "unlabeled", "val_fraction": 0.2},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 8}, "epochs": 1},
        "student": {"arch": "mlp", "depth": 1, "width": 8},
        "method": {"name": "dkd", "params": {}},
        "train": {"epochs": 1, "baseline": True, "checkpoint_every": 0}}), emit=events.append).run()
    texts = [e.message for e in events if isinstance(e, Notice)]
    assert any(t.startswith("Teacher") for t in texts) and any("alone" in t for t in texts), texts
    for over in ({"transfer": "labels", "n_labels": 50}, {"transfer": "unlabeled"},
                 {"transfer": "heldout"}, {"val_fraction": 0.2}, {"omit_class": 3}):
        texts += load_data(RunConfig.from_dict({"data": {"name": "digits", **over}}).data).notes
    cfgs = [load_preset(p) for p in list_presets() if not p.startswith(("cifar", "text"))]
    cfgs += [load_preset("digits-quick").with_overrides(o) for o in (
        {"method.params.t_squared": False}, {"data.transfer": "unlabeled"},
        {"teacher.model.width": 8}, {"method.name": "dkd", "train.epochs": 2})]
    for cfg in cfgs:
        texts += lint(cfg)
    assert texts
    assert_plain(texts, "data notes and pitfall warnings")
