"""The notebook a student takes home: ``export RUN --format ipynb`` writes a plain-PyTorch notebook
of a stored run (kdengine/teaching/notebook.py), copied from the engine's own sources.

Every method that trains on the built-in data sets gets a short run here; its exported notebook is
executed headless (one Jupyter kernel per notebook, two at a time, with ``kdengine`` made
unimportable in the kernel) and must print a test accuracy within 2 points of the run's, at every
epoch. The notebooks reproduce the run's seeds, split and batch order, so on a CPU they land on the
same figure. The short runs use the methods' defaults (FitNet's two stages, DML's peers in turn, BSS's
base samples both models get right, specialists by K-means), a few with settings that reach what a
default run on digits would not: a CNN pair for mdistiller's FitNet (its convolutional regressor),
weight decay for FitNet (stage 1 must leave the rest of the student alone), and a cosine schedule for
DML (its peers follow it).
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kdengine import (NotExportable, RunConfig, Store, build_notebook, export_notebook,
                      get_method_class, method_names, notebook_problem)
from kdengine.teaching.notebook import code_cells

from support import data_folder, train_stored

ROOT = Path(__file__).resolve().parent.parent
TEXT_METHODS = {"distilbert", "tinybert"}          # the text task: refused, with the reason
EXPORTED = [m for m in method_names() if m not in TEXT_METHODS]

# A short run per method; together they cover the built-in data sets and model families.
DATA = {"digits": {"name": "digits", "transfer": "labels", "n_labels": 50},
        "moons": {"name": "moons", "n_samples": 300},
        "circles": {"name": "circles", "n_samples": 300},
        "blobs": {"name": "blobs", "n_samples": 300, "n_classes": 3},
        "spirals": {"name": "spirals", "n_samples": 300, "n_classes": 3},
        "hierarchy": {"name": "hierarchy", "n_samples": 400, "hier_classes": 12,
                      "hier_superclasses": 4}}
RUNS = {   # method -> (data, method knobs, student)
    "hinton": ("digits", {}, None), "dkd": ("digits", {}, None), "fitnet": ("digits", {}, None),
    "fitnet_mdistiller": ("digits", {}, {"arch": "cnn", "depth": 2, "width": 16}),
    "bss": ("digits", {"probe_size": 32}, None), "ce": ("digits", {}, {"arch": "cnn", "depth": 1,
                                                                        "width": 8}),
    "multi_teacher": ("digits", {"teachers": ["mlp-1-64"]}, None),
    "specialists": ("digits", {"specialist_epochs": 2, "combine_steps": 10}, None),
    "sobolev": ("moons", {}, None), "noisy_teacher": ("circles", {}, None),
    "logit_mse": ("blobs", {}, None), "adversarial": ("spirals", {}, None),
    "dml": ("hierarchy", {}, None),
}
# method -> other settings of its short run (the teacher's model, the training's); ce and sobolev: a
# learning rate at which two epochs leave chance level (at 0.003 they ended at 9.78% and 50%, where
# a notebook that trained differently could land on the same figure)
SETTINGS = {"fitnet_mdistiller": {"teacher": {"arch": "cnn", "depth": 2, "width": 16}},
            "fitnet": {"train": {"weight_decay": 5e-4}},
            "dml": {"train": {"scheduler": "cosine", "lr": 0.01}},
            "ce": {"train": {"lr": 0.03}}, "sobolev": {"train": {"lr": 0.01}}}
ACC = re.compile(r"test accuracy: (\d+\.\d+)%")
EPOCH_ACC = re.compile(r"^epoch \d+/\d+: test accuracy (\d+\.\d+)%", re.M)
NO_TEACHER_FILE = "logit_mse"     # its notebook runs without the teacher file, and trains one
ARTIFACTS = ROOT / "tests" / "artifacts"


def config(method: str, data: str = "digits", params: dict | None = None,
           student: dict | None = None, more: dict | None = None) -> RunConfig:
    more = more or {}
    return RunConfig.from_dict({
        "data": DATA.get(data, {"name": data}),
        "teacher": {"model": more.get("teacher", {"arch": "mlp", "depth": 2, "width": 64}),
                    "epochs": 5},
        "student": student or {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": method, "params": params or {}},
        "train": {"epochs": 2, "lr": 0.003, "log_every": 10, **more.get("train", {})}})


def short_run(method: str) -> RunConfig:
    data, params, student = RUNS[method]
    return config(method, data, params, student, SETTINGS.get(method))


def test_every_built_in_method_is_exported_or_refused_with_its_reason():
    assert set(RUNS) == set(EXPORTED), "a new method needs a short run here"
    for name in method_names():
        why = notebook_problem(short_run(name) if name in RUNS else
                               RunConfig.from_dict({"data": {"name": "text"},
                                                    "teacher": {"model": {"arch": "transformer"}},
                                                    "student": {"arch": "transformer"},
                                                    "method": {"name": name}}))
        assert (why is None) == (name in RUNS), (name, why)
        if why:
            assert name in why and "text task" in why


def _imports_of(src: str) -> list[str]:
    tree = ast.parse(src)
    out = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    out += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    return out


@pytest.mark.parametrize("method", EXPORTED)
@pytest.mark.parametrize("data", ["digits", "moons", "hierarchy", "mnist"])
def test_no_cell_imports_kdengine(method, data):
    """Every code cell of every method's notebook, on every kind of data set: no import of the
    engine in any form, and only the libraries a Colab runtime has."""
    # writing a notebook reads the config only: MNIST need not be on disk
    student = {"arch": "cnn", "depth": 2, "width": 8} if data in ("digits", "mnist") else None
    cfg = config(method, data, RUNS[method][1], student)
    nb = build_notebook({"id": "r", "config": cfg.to_dict(), "summary": {}})
    cells = code_cells(nb)
    assert cells and json.loads(json.dumps(nb))["nbformat"] == 4
    for src in cells:
        assert "from kdengine" not in src and "import kdengine" not in src
        assert "__import__" not in src and "importlib" not in src
        tops = {m.split(".")[0] for m in _imports_of(src)} - set(sys.stdlib_module_names)
        assert tops <= {"torch", "torchvision", "numpy", "sklearn", "matplotlib"}, tops
    assert "def loss_terms" in "\n".join(cells)
    assert ACC.pattern.split("(")[0].rstrip() in cells[-1]


# What the trainer's loop does that the notebook's does not, and why (the notebook trains in float32,
# in the default memory layout, and shows the test accuracy and the method's epoch metrics only).
NOT_IN_NOTEBOOK = {"artifacts": "pictures for the app's pages", "Artifacts": "their event",
                   "MonitorSetup": "the pages' monitors", "make": "a monitor's factory",
                   "memory_format": "channels_last on CUDA", "bf16_autocast": "float32 only",
                   "evaluate_each": "test accuracy only, with logits_of", "model_label": "the summary",
                   "count_params": "the summary", "field_specs": "the knobs' labels in a notice"}


def test_the_notebooks_loop_calls_what_the_trainer_calls():
    """The notebook's training loop is written for it (the trainer's also logs, checkpoints and
    reports); it calls every method hook and every helper the trainer's loop calls, so a hook added to
    the trainer (a per-stage optimiser, say) fails here until the notebook follows it."""
    import builtins
    import inspect
    from kdengine.run.trainer import Trainer
    from kdengine.teaching.notebook import _LOOP

    def uses(src: str) -> set[str]:
        tree = ast.parse(textwrap.dedent(src))
        out = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Name) and n.value.id == "method"}
        return out | {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Name) and not hasattr(builtins, n.func.id)}
    trainer = set().union(*(uses(inspect.getsource(f)) for f in (
        Trainer._train_student, Trainer._build_student, Trainer._epoch_extras)))
    assert {"setup", "extra_modules", "make_optimizer", "make_scheduler", "train_step"} <= trainer
    loop = uses(_LOOP.replace("METHOD_CLASS", "method_cls"))    # the run's method class
    missing = trainer - loop - set(NOT_IN_NOTEBOOK)
    assert not missing, f"the trainer's loop uses {sorted(missing)}; the notebook's does not"


def test_text_runs_and_engine_machinery_are_refused():
    from kdengine.teaching.bundle import Bundle
    with pytest.raises(NotExportable, match="distilbert"):
        build_notebook({"id": "r", "summary": {}, "config": {
            "data": {"name": "text"}, "teacher": {"model": {"arch": "transformer"}},
            "student": {"arch": "transformer"}, "method": {"name": "distilbert"}}})
    # code that reaches the store is not plain PyTorch: refused, naming the first part it reached
    # that is not (the names are followed in order, so always the same one: the config's path check)
    b = Bundle({}, {}, set(), lambda m: (0, 0))
    with pytest.raises(NotExportable,
                       match=r"\(in kdengine.core.(store|checkpoints|paths)\) is engine machinery"):
        b.add("kdengine.analysis.dark_knowledge", "run_test_logits")


def test_a_shipped_teacher_keeps_its_own_architecture():
    """A shipped CNN teacher for an MLP config: the notebook builds a CNN for it, while the config
    that methods read (specialists build from it) stays as stored."""
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "method": {"name": "specialists"},
                               "teacher": {"source": "shipped", "checkpoint": "digits-cnn-3x32"}})
    cells = code_cells(build_notebook({"id": "r", "config": cfg.to_dict(), "summary": {}}))
    code = "\n".join(cells)
    assert "def _cnn(" in code and "def _mlp(" in code
    assert "arch=as_config({'arch': 'cnn', 'depth': 3, 'width': 32" in code
    assert "'model': {'arch': 'mlp', 'depth': 2, 'width': 256" in code


# -- executing the exported notebooks ---------------------------------------------------------------
def execute(folder: Path, timeout: int = 300) -> tuple[list[str], float]:
    """Run ``folder``/nb.ipynb top to bottom in a fresh kernel where ``import kdengine`` fails;
    returns each cell's printed text and the seconds it took."""
    import nbformat
    from nbclient import NotebookClient
    block = folder / "_block" / "kdengine"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('the notebook must not import kdengine')")
    nb = nbformat.read(folder / "nb.ipynb", as_version=4)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})
    client.execute(env={**os.environ, "PYTHONPATH": str(block.parent), "MPLBACKEND": "agg"})
    took = time.perf_counter() - t0
    texts = ["".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
             for c in nb.cells if c.cell_type == "code"]
    return texts, took


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Train every method's short run, export each as a notebook and execute them all (two kernels
    at a time); method -> (run's accuracy, notebook's accuracy, printed text, seconds, the run's
    and the notebook's accuracy at each epoch)."""
    root = tmp_path_factory.mktemp("nb_runs")
    ids = train_stored(root, {m: short_run(m) for m in RUNS})
    store = Store(root)
    jobs = {}
    for m, rid in ids.items():
        _, blob = export_notebook(store, rid)
        folder = tmp_path_factory.mktemp(f"nb_{m}")
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            z.extractall(folder)
        (folder / f"kd_{rid}.ipynb").rename(folder / "nb.ipynb")
        if m == NO_TEACHER_FILE:     # the notebook then trains the teacher, the way the app does
            (folder / "teacher.pt").unlink()
        jobs[m] = (folder, store.get_run(rid)["summary"]["final_test_acc"],
                   [v for _, _, v in store.series(rid)["test_acc"]])

    def run(item):
        name, (folder, acc, epochs) = item
        try:
            texts, took = execute(folder)
        except Exception as e:           # reported by the test of that method, not here
            return name, (acc, None, f"{type(e).__name__}: {e}", 0.0, epochs, [])
        found = ACC.findall(texts[-1])
        text = "\n".join(texts)
        return name, (acc, float(found[-1]) / 100 if found else None, text, took, epochs,
                      [float(v) / 100 for v in EPOCH_ACC.findall(text)])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        out = dict(pool.map(run, jobs.items()))
    total = time.perf_counter() - t0
    # for docs/perf.md: how long the notebooks took, next to the machine's load
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "notebook_timings.json").write_text(json.dumps({
        "total_s": round(total, 1), "load_average": os.getloadavg(),
        "per_notebook_s": {k: round(v[3], 1) for k, v in out.items()},
        "accuracy": {k: [v[0], v[1]] for k, v in out.items()}}, indent=1))
    return out


@pytest.mark.parametrize("method", list(RUNS))
def test_exported_notebook_runs_and_lands_within_2_points_of_its_run(executed, method):
    run_acc, nb_acc, text, _, run_epochs, nb_epochs = executed[method]
    assert nb_acc is not None, text[-3000:]
    assert abs(nb_acc - run_acc) <= 0.02, (method, run_acc, nb_acc)
    # every epoch's, not only the last (a stage that went wrong may not show at the end)
    assert len(nb_epochs) == len(run_epochs) == 2, (run_epochs, nb_epochs)
    assert all(abs(a - b) <= 0.02 for a, b in zip(run_epochs, nb_epochs)), (run_epochs, nb_epochs)
    if method == NO_TEACHER_FILE:
        assert "trained here" in text
    elif get_method_class(method).needs_teacher:
        assert "loaded from teacher.pt" in text


def test_cli_writes_the_notebook_and_its_teacher(tmp_path, tiny_cfg):
    with data_folder(tmp_path):              # the teacher is cached in the folder the CLI reads
        ids = train_stored(tmp_path, {"kd": tiny_cfg})
    env = {**os.environ, "KD_RUNS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "kdengine", "export", ids["kd"], "--format", "ipynb",
                          "-o", str(tmp_path / "take_home" / "kd.ipynb")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    nb = json.loads((tmp_path / "take_home" / "kd.ipynb").read_text())
    assert nb["metadata"]["kd_playground"]["run"] == ids["kd"]
    import torch
    state = torch.load(tmp_path / "take_home" / "teacher.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # without -o: a .zip holding both (written by the same function)
    from kdengine import write_notebook
    with data_folder(tmp_path):
        [zipped] = write_notebook(Store(tmp_path), ids["kd"], tmp_path / f"kd_{ids['kd']}.zip")
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == sorted([f"kd_{ids['kd']}.ipynb", "teacher.pt"])
