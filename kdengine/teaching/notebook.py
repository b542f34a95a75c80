"""A stored run as a Jupyter notebook a student takes home: plain PyTorch, no ``kdengine``.

``export_notebook(store, run_id)`` returns a .zip holding the notebook and the run's teacher weights
(``teacher.pt``, a state dict that loads with ``weights_only=True``; without the file the notebook
trains the teacher itself, as the engine does). The notebook builds the run's data (the same split,
transfer set and labels), loads the teacher, builds the student, trains it with the run's method,
optimiser and seeds (same batch order), draws the curves and ends by printing
``test accuracy: XX.XX%``. It needs torch, numpy, scikit-learn and matplotlib (and torchvision for
MNIST, FashionMNIST and CIFAR), so it runs on Colab unchanged.

Its code is the engine's own, copied from the files that train (:mod:`kdengine.teaching.bundle`):
the method class and its losses, the data set builder, the model classes, one training step. Only the
loop that calls them is written here; it follows :class:`kdengine.run.trainer.Trainer` step for step
(``tests/test_notebook_export.py`` checks that it calls every method hook and helper the trainer's
loop calls).
A run this cannot reproduce (the text task, a Hugging Face teacher) is refused with the reason.
"""
from __future__ import annotations

import io
import json
import pprint
import zipfile
from pathlib import Path

from kdengine.core.config import TOY_DATASETS, SYNTHETIC_DATASETS, ModelConfig, RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.core.registry import get_method_class
from kdengine.teaching.bundle import Bundle, NotExportable

SECTIONS = ("helpers", "data", "models", "teacher", "plumbing", "method")
TEACHER_FILE = "teacher.pt"
TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")

# -- stand-ins for engine helpers that are not plain PyTorch (the registry, the knob metadata for
# the pages, the data folder, the teacher cache) ---------------------------------------------------
_KNOBS = '''
def param(default=MISSING, *, default_factory=MISSING, **ui):
    """A knob: a dataclass field (the engine also keeps its range and help text, for its pages)."""
    if default_factory is not MISSING:
        return field(default_factory=default_factory)
    return field(default=default)


def temperature_knob(default=4.0, **ui):
    return param(default)


def weight_knob(default, *ui_args, **ui):
    return param(default)


def register(cls):
    """The engine lists its methods by name; here there is only this one."""
    return cls
'''
_PATHS = '''
def inside_root(path, field_path):
    """Downloaded data sets go to a folder beside the notebook."""
    return Path(path)
'''
_CONFIG = '''
class Config(SimpleNamespace):
    """The run's settings as attributes (CONFIG.train.lr), as the engine's RunConfig gives them."""

    def copy(self):
        return copy.deepcopy(self)


def as_config(d):
    return Config(**{k: as_config(v) if isinstance(v, dict) and k != "params" else v
                     for k, v in d.items()})
'''
_TEACHER = '''
def get_teacher(cfg, data, device, progress=None, should_stop=None, file=None, arch=None):
    """The teacher ``cfg.teacher`` names (of architecture ``arch``, by default the config's):
    the weights the export saved beside this notebook when the file is there (loaded with
    weights_only=True), else trained here as KD Playground trains it (seeded with the data seed;
    cross-entropy for the teacher's epochs at its learning rate)."""
    t, m = cfg.teacher, arch or cfg.teacher.model
    file = Path(file or f"teacher_{m.arch}-{m.depth}-{m.width}.pt")
    if file.exists():
        model = build_model(m, data.input_shape, data.n_classes)
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        source = f"loaded from {file}"
    elif t.source == "train":
        torch.manual_seed(cfg.data.seed)
        model = build_model(m, data.input_shape, data.n_classes)
        fit_supervised(model, data.teacher_train.x, data.teacher_train.y, t.epochs, t.lr,
                       cfg.train.batch_size, cfg.data.seed, device, progress, should_stop)
        source = f"trained here for {t.epochs} epochs"
    else:
        raise FileNotFoundError(f"{file} is missing: put the teacher file that came with this "
                                f"notebook beside it (on Colab: the Files panel, then Upload)")
    model.to(device).eval().requires_grad_(False)
    pred = logits_of(model, data.test.x, device).argmax(-1).cpu()
    acc = (pred == data.test.y).float().mean().item()
    return model, {"label": f"{m.arch} {m.depth}x{m.width}", "test_acc": acc, "source": source,
                   "cached": file.exists()}
'''
SHIMS = {
    **{k: (0, _KNOBS, []) for k in ("param", "temperature_knob", "weight_knob", "register")},
    "inside_root": (0, _PATHS, []),
    "get_teacher": (3, _TEACHER, [("kdengine.models.families", "build_model"),
                                  ("kdengine.models.families", "logits_of"),
                                  ("kdengine.teachers.fitting", "fit_supervised")]),
}
SHIM_OF = {("kdengine.core.knobs", "param"): "param",
           ("kdengine.core.knobs", "temperature_knob"): "temperature_knob",
           ("kdengine.core.knobs", "weight_knob"): "weight_knob",
           ("kdengine.core.registry", "register"): "register",
           ("kdengine.core.paths", "inside_root"): "inside_root",
           ("kdengine.teachers.sources", "get_teacher"): "get_teacher"}
# The data sets' own loaders; a notebook copies the one its run uses.
LOADERS = {"toys": ("kdengine.data.datasets", "_toy"), "digits": ("kdengine.data.datasets", "_digits"),
           "hierarchy": ("kdengine.data.hierarchy", ""),
           "torchvision": ("kdengine.data.datasets", "_torchvision"),
           "synthetic": ("kdengine.data.datasets", "_synthetic_cifar")}


def _section(module: str) -> tuple[int, int]:
    """(section, rank in it) of an engine module's definitions in the notebook."""
    for i, prefix in enumerate(("kdengine.losses", "kdengine.analysis")):
        if module.startswith(prefix):
            return 5, i
    if module.startswith("kdengine.methods") and module != "kdengine.methods.base":
        return 5, 2
    for section, prefix in ((1, "kdengine.data"), (2, "kdengine.models"), (3, "kdengine.teachers")):
        if module.startswith(prefix):
            return section, 0
    return 4, 0        # the method contract, the configs' dataclasses, one training step


def _loader_group(name: str) -> str:
    if name in TOY_DATASETS:
        return "toys"
    if name in TORCHVISION_SETS:
        return "torchvision"
    if name in SYNTHETIC_DATASETS:
        return "synthetic"
    return name


def notebook_problem(cfg: RunConfig | dict) -> str | None:
    """Why a run cannot be exported as a notebook, in words; None when it can."""
    try:
        cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    except ConfigError as e:              # a run stored by an older version, say
        return f"its stored settings are no longer valid here ({e})"
    try:
        cls = get_method_class(cfg.method.name)
    except KeyError as e:
        return str(e.args[0])
    if cfg.data.name == "text" or cls.requires_arch:
        return (f"{cfg.method.name} on {cfg.data.name}: the text task (its tokens and transformer) "
                f"is not part of the notebook export")
    if cls.needs_teacher and cfg.teacher.checkpoint.startswith("hf:"):
        return "a Hugging Face teacher is not part of the notebook export"
    try:
        _bundle(cfg)
    except NotExportable as e:
        if e.name:
            return (f"{cfg.method.name} cannot be exported yet: its code uses {e.name}, a part of "
                    f"the app that is not plain PyTorch")
        return str(e)
    return None


def _bundle(cfg: RunConfig, store=None) -> tuple[Bundle, type]:
    from kdengine.models.families import BUILDERS
    cls = get_method_class(cfg.method.name)
    group = _loader_group(cfg.data.name)
    omit = {key for g, key in LOADERS.items() if g != group}
    b = Bundle(SHIMS, SHIM_OF, omit, _section)
    b.add("kdengine.data.datasets", "_build")
    archs = {cfg.student.arch, cfg.teacher.model.arch}
    if cls.needs_teacher and cfg.teacher.source != "train":
        archs.add(_teacher_model(cfg, store).arch)
    # a model named in a knob ("mlp-1-128": an extra teacher) needs its family's builder too
    for v in cfg.to_dict()["method"]["params"].values():
        for s in (v if isinstance(v, list) else [v]):
            archs |= {a for a in BUILDERS if isinstance(s, str) and s.startswith(f"{a}-")}
    b.add("kdengine.models.families", "build_model")
    b.add("kdengine.models.families", "logits_of")
    for arch in sorted(archs):
        fn = BUILDERS[arch]
        b.add(fn.__module__, fn.__name__)
    if cls.needs_teacher:
        b._add_shim("get_teacher")
    for name in ("Batch", "TrainContext"):
        b.add("kdengine.methods.base", name)
    b.add("kdengine.core.events", "Notice")
    for name in ("seed_everything", "train_step", "make_optimizer", "make_scheduler"):
        b.add("kdengine.run.trainer", name)
    b.add(cls.__module__, cls.__name__)
    return b, cls


# -- the notebook ------------------------------------------------------------------------------
def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip() + "\n"}


def _code(text: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": text.strip() + "\n"}


def _teacher_model(cfg: RunConfig, store=None) -> ModelConfig:
    """The architecture of the run's teacher, whatever its source (``store``: where a teaching run
    is stored; the data folder's by default)."""
    t = cfg.teacher
    if t.source == "shipped":
        from kdengine.teachers.sources import shipped_teachers
        meta = shipped_teachers().get(t.checkpoint)
        if meta is None:
            raise NotExportable(f"the shipped teacher {t.checkpoint} is not here")
        return ModelConfig(**meta["model"])
    if t.source == "run":
        from kdengine.core.store import Store
        row = (store or Store()).get_run(t.checkpoint)
        if row is None:
            raise NotExportable(f"the run {t.checkpoint} whose student teaches is not stored here")
        return ModelConfig(**row["config"]["student"])
    return t.model


def _teacher_weights(cfg: RunConfig) -> bytes | None:
    """The run's teacher as a state dict file, or None when it is not cached (the notebook trains
    it then)."""
    import torch
    from kdengine.data import load_data
    from kdengine.run.stored import teacher_is_cached
    from kdengine.teachers.sources import get_teacher
    if not teacher_is_cached(cfg):
        return None
    model, _ = get_teacher(cfg, load_data(cfg.data), torch.device("cpu"))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def build_notebook(row: dict, store=None) -> dict:
    """The notebook (nbformat 4, as a dict) for a stored run's row (``store.get_run``)."""
    cfg = RunConfig.from_dict(row["config"])
    why = notebook_problem(cfg)
    if why:
        raise NotExportable(why)
    b, cls = _bundle(cfg, store)
    sections = b.sections(len(SECTIONS))
    d = cfg.to_dict()
    # a shipped teacher, a checkpoint or a stored run's student: its own architecture
    arch = "" if cfg.teacher.source == "train" else \
        f", arch=as_config({_teacher_model(cfg, store).__dict__!r})"
    params_cls = cls.Params.__name__
    acc = (row.get("summary") or {}).get("final_test_acc")
    run_id = row.get("id", "")
    epochs = cfg.train.epochs
    notes = []
    if cfg.train.amp or cfg.train.compile:
        notes.append("bf16 autocast and torch.compile are off here: plain float32.")
    if b.omitted:
        notes.append("Helpers for the multi-label text task and the loaders of other data sets "
                     "are left out; the branches that would use them are not taken for this run.")
    for imp in (("module", "copy", "copy", "copy"), ("from", "dataclasses", "MISSING", "MISSING"),
                ("from", "dataclasses", "field", "field"), ("from", "pathlib", "Path", "Path"),
                ("from", "types", "SimpleNamespace", "SimpleNamespace"),
                ("module", "matplotlib.pyplot", "matplotlib.pyplot", "plt")):
        b.imports.add(imp)
    cells = [_md(f"""
# {cls.title}: a run from KD Playground

Run `{run_id}` distilled a teacher into a student on **{cfg.data.name}** with **{cfg.method.name}**
({cls.paper}). This notebook trains that student again, in plain PyTorch: the same data split,
the same teacher, the same first weights, the same batches in the same order, the same loss.
""" + (f"The run reached **{acc:.2%}** test accuracy; " if acc is not None else "")
        + f"""this notebook lands within about a point of it (a GPU's arithmetic differs slightly).

The code below is KD Playground's own, copied from the files that trained the run: the data set
builder, the models, the method and its losses, one training step. Only the training loop is written
for the notebook, and it calls them exactly as the app does. Run the cells from the top.

**Files.** {("`" + TEACHER_FILE + "` holds the teacher's weights: keep it beside this notebook "
             "(on Colab: the Files panel, then Upload). Without it, the teacher is trained here "
             "first, the same way.") if cls.needs_teacher else "This method needs no teacher file."}
""" + "".join(f"\n- {n}" for n in notes)),
             _code("from __future__ import annotations\n\n" + "\n".join(b.import_lines())),
             _md("Small stand-ins for engine helpers: knobs are plain dataclass fields here "
                 "(the app also keeps their ranges and help texts), and the settings are read as "
                 "attributes."),
             _code("\n\n".join(sections[0] + [_CONFIG.strip()])),
             _md("## The run's settings\n\nAs stored with the run. Change any of them and run the "
                 "cells below again."),
             _code(f"CONFIG_DICT = {pprint.pformat(d, sort_dicts=False, width=96)}\n"
                   "CONFIG = as_config(CONFIG_DICT)\n\n"
                   'device = torch.device("cuda" if CONFIG.train.device != "cpu" and '
                   'torch.cuda.is_available() else "cpu")\n'
                   'if device.type == "cpu":\n'
                   "    torch.set_num_threads(1)   # as the app trains on a CPU: the same arithmetic\n"
                   "print(device)"),
             _md("## The data\n\nThe data set, its train/test split, the teacher's training set and "
                 "the student's transfer set (and which of its labels the student may use), all "
                 "drawn from the data seed."),
             _code("\n\n".join(sections[1]) + "\n\n\ndata = _build(CONFIG.data)\nfor note in data.notes:"
                   "\n    print(note)\nprint(f\"{len(data.teacher_train)} teacher samples, "
                   "{len(data.transfer)} transfer samples ({data.n_labeled} labelled), "
                   "{len(data.test)} test samples, {data.n_classes} classes\")"),
             _md("## The models"),
             _code("\n\n".join(sections[2]))]
    if cls.needs_teacher or sections[3]:
        cells.append(_md("## The teacher"))
        body = "\n\n".join(sections[3])
        if cls.needs_teacher:
            body += (f'\n\n\nteacher, info = get_teacher(CONFIG, data, device, file="{TEACHER_FILE}"{arch})\n'
                     "print(f\"teacher {info['label']} ({info['source']}): test accuracy "
                     "{info['test_acc']:.2%}\")")
        cells.append(_code(body))
    cells += [_md("## How the app runs a method\n\nEvery method is a class with a `loss_terms` "
                  "method returning its named, unweighted loss terms; the trainer weighs them with "
                  "the knobs the class names in `weight_knobs`, adds them up and takes one "
                  "optimiser step (`train_step`)."),
              _code("\n\n".join(sections[4])),
              _md(f"## The method: {cls.title}\n\n$$\n{cls.formula}\n$$\n\n{cls.paper}"),
              _code("\n\n".join(sections[5])
                    + f"\n\n\nparams = {params_cls}(**CONFIG_DICT['method']['params'])\nparams"),
              _md("## Training\n\nThe student is built right after seeding with the run's seed; "
                  "each epoch draws a permutation of the transfer set from a generator seeded the "
                  "same way, and the last partial batch is dropped, as in the app. `method.setup` "
                  "prepares what the method needs before the first step, and the modules it trains "
                  "besides the student (`extra_modules`) join the optimiser. A weight that a step's "
                  "loss does not reach gets no gradient, and the optimiser leaves it as it is (no "
                  "weight decay, no momentum) for that step."),
              _code(_LOOP.replace("METHOD_CLASS", cls.__name__)),
              _md("## The curves"),
              _code(_CURVES),
              _code('print(f"test accuracy: {history[\'test_acc\'][-1]:.2%}")')]
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    return {"cells": cells, "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}, "kd_playground": {"run": run_id, "epochs": epochs,
                                                                "test_acc": acc}},
            "nbformat": 4, "nbformat_minor": 5}


_LOOP = '''
def show(event):
    """What the method says while it prepares (the app shows these lines with the run)."""
    if isinstance(event, Notice):
        print(event.message)


tc = CONFIG.train
teachers = [teacher] if METHOD_CLASS.needs_teacher else []
seed_everything(tc.seed)
student = build_model(CONFIG.student, data.input_shape, data.n_classes).to(device)
n = len(data.transfer)
bs = min(tc.batch_size, n)
steps_per_epoch = max(1, n // bs)
ctx = TrainContext(steps_per_epoch=steps_per_epoch, epochs=tc.epochs, n_classes=data.n_classes,
                   input_shape=data.input_shape, device=device, data_kind=data.kind, seed=tc.seed,
                   config=CONFIG, emit=show)
method = METHOD_CLASS(student, teachers, params, ctx)
if data.n_labeled == 0:            # no labels: the terms that need them get weight 0
    print("No labels in the transfer set:", ", ".join(method.zero_label_terms()), "forced to 0.")
method.setup(data)
extra = [m.to(device) for m in method.extra_modules()]
trainable = [p for m in [student, *extra] for p in m.parameters() if p.requires_grad]
opt = make_optimizer(tc, trainable)
sched = make_scheduler(tc, opt, steps_per_epoch * tc.epochs)

X, Y, L = data.transfer.x.to(device), data.transfer.y.to(device), data.labeled.to(device)
test_x, test_y = data.test.x.to(device), data.test.y.to(device)
t_logits = None
if teachers and method.cache_teacher_logits:
    # the transfer set is fixed: the teachers' outputs on it are computed once
    t_logits = [logits_of(t, X, device) for t in method.teachers]
gen = torch.Generator().manual_seed(tc.seed)
history = {"loss": {}, "epoch": [], "test_acc": []}
step = 0
method.train(True)
for epoch in range(tc.epochs):
    perm = torch.randperm(n, generator=gen).to(device)
    for i in range(steps_per_epoch):
        idx = perm[i * bs:(i + 1) * bs]
        batch = Batch(X[idx], Y[idx], L[idx], idx,
                      None if t_logits is None else [t[idx] for t in t_logits])
        terms = train_step(method, batch, step, opt, sched)
        step += 1
        for name, value in method.weigh(terms).items():      # what the optimiser summed
            history["loss"].setdefault(name, []).append((step / steps_per_epoch, value.item()))
    method.train(False)
    acc = (logits_of(student, test_x, device).argmax(-1) == test_y).float().mean().item()
    more = method.epoch_metrics(epoch)
    method.train(True)
    history["epoch"].append(epoch + 1)
    history["test_acc"].append(acc)
    print(f"epoch {epoch + 1}/{tc.epochs}: test accuracy {acc:.2%}"
          + "".join(f", {k} {v:.4f}" for k, v in more.items()))
method.train(False)
'''

_CURVES = '''
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, points in history["loss"].items():
    x, y = zip(*points)
    ax_loss.plot(x, y, label=name, linewidth=1)
ax_loss.set(xlabel="epoch", ylabel="loss (weighted)", title="loss terms")
ax_loss.legend()
ax_acc.plot(history["epoch"], history["test_acc"], "o-", label="student")
if teachers:
    ax_acc.axhline(info["test_acc"], color="tab:orange", linestyle=":", label="teacher")
ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
ax_acc.legend()
plt.tight_layout()
plt.show()
'''


def export_notebook(store, run_id: str) -> tuple[str, bytes]:
    """(file name, .zip bytes) holding the run's notebook and, when the teacher is cached, its
    weights in ``teacher.pt``. Raises NotExportable naming what cannot be exported."""
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no stored run {run_id}")
    nb = build_notebook(row, store)
    cfg = RunConfig.from_dict(row["config"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"kd_{run_id}.ipynb", json.dumps(nb, indent=1))
        if get_method_class(cfg.method.name).needs_teacher:
            weights = _teacher_weights(cfg)
            if weights is not None:
                z.writestr(TEACHER_FILE, weights)
    return f"kd_{run_id}.zip", buf.getvalue()


def write_notebook(store, run_id: str, path: str | Path) -> list[Path]:
    """Write a run's export: a .zip at ``path``, or, when ``path`` ends in .ipynb, the notebook
    there and its teacher file beside it. Returns the files written."""
    name, blob = export_notebook(store, run_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".ipynb":
        path.write_bytes(blob)
        return [path]
    out = []
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for member in z.namelist():
            target = path if member.endswith(".ipynb") else path.parent / member
            target.write_bytes(z.read(member))
            out.append(target)
    return out


def code_cells(nb: dict) -> list[str]:
    """The source of each code cell of a notebook (nbformat 4 as a dict)."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]
