"""Run configuration: dataclasses for data, models, teacher, method and training.

A ``RunConfig`` is plain data: it round-trips through dicts, JSON, YAML and URL query strings, and
``validate()`` rejects a bad value with a :class:`ConfigError` naming the field, the value and what
is allowed. ``config_hash`` identifies identical runs (the human ``name`` does not count).

After ``validate()``, ``method.params`` holds the method's typed ``Params`` dataclass (before it, a
plain dict of knobs, as read from a file or a URL); ``to_dict()`` turns it back into that dict, so
stored configs and their hashes are plain data. A config is validated once, where it enters the
engine; ``validated()`` is the cheap "validate unless already done and unchanged since".
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kdengine.core.knobs import ConfigError, from_dict, param, validate_dataclass
from kdengine.core.paths import check_relative
from kdengine.core.registry import get_method_class, method_names

DATASETS = ("moons", "circles", "spirals", "blobs", "digits", "hierarchy", "mnist", "fashion_mnist",
            "cifar10", "cifar100", "cifar10_synthetic", "cifar100_synthetic", "text")
TOY_DATASETS = ("moons", "circles", "spirals", "blobs")
# Random CIFAR-shaped images (3x32x32) drawn from a seed: for timing when CIFAR is not on disk.
SYNTHETIC_DATASETS = ("cifar10_synthetic", "cifar100_synthetic")
IMAGE_DATASETS = ("digits", "hierarchy", "mnist", "fashion_mnist", "cifar10", "cifar100",
                  *SYNTHETIC_DATASETS)
TRANSFER_SETS = ("train", "heldout", "unlabeled", "labels")
ARCHS = ("mlp", "cnn", "resnet", "resnet18", "resnetx4", "wrn", "mobilenetv2", "transformer")
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
# The KD benchmarks' CIFAR families (kdengine/models/cifar.py): the depths and widths they accept.
CIFAR_ARCHS = {
    "resnetx4": {"depth": RESNET_DEPTHS, "width": (8, 16, 32, 64)},     # width = stem channels
    "wrn": {"depth": (10, 16, 22, 28, 40), "width": (1, 2, 4, 8, 10)},   # width = widen factor
    "mobilenetv2": {"depth": (1, 2, 3, 4, 5, 6), "width": (25, 50, 75, 100)},  # expansion, width %
}
CONV_ARCHS = ("cnn", "resnet", "resnet18", *CIFAR_ARCHS)
MAX_CONFIG_BYTES = 1_000_000     # config files and uploads larger than this are refused


@dataclass
class DataConfig:
    name: str = param("digits", choices=DATASETS, help="Data set. Toys and digits need no download.")
    n_samples: int = param(1000, min=50, max=200_000,
                           help="Points drawn for the 2-D toys and the hierarchy data set; training "
                                "images of the synthetic CIFAR-shaped sets.",
                           label="samples (generated)")
    noise: float = param(0.2, min=0.0, max=5.0, step=0.05,
                         help="Noise of the generated data sets (2-D toys, hierarchy).")
    n_classes: int = param(3, min=2, max=10, help="Classes for spirals and blobs.", label="classes (toys)")
    hier_classes: int = param(100, min=4, max=1000, label="classes (hierarchy)",
                              help="Classes of the hierarchy data set.")
    hier_superclasses: int = param(20, min=2, max=200, label="superclasses (hierarchy)",
                                   help="Superclasses the hierarchy's classes cluster into "
                                        "(CIFAR-100: 100 classes in 20).")
    test_fraction: float = param(0.25, min=0.05, max=0.8, step=0.05, help="Share of data held for test.")
    val_fraction: float = param(0.0, min=0.0, max=0.5, step=0.05,
                                help="Share of the training set held out for validation: neither "
                                     "teacher nor student trains on it and the test set stays unseen, "
                                     "so a search can pick knobs on it honestly. 0 = none.")
    transfer: str = param("train", choices=TRANSFER_SETS,
                          help="What the student learns from: the teacher's training set, a held-out "
                               "split, the training set without labels, or only a few labels.")
    n_labels: int = param(50, min=1, max=100_000, help="Labelled samples kept when transfer = labels.")
    heldout_fraction: float = param(0.5, min=0.05, max=0.95, step=0.05,
                                    help="Share of the training set kept away from the teacher for "
                                         "transfer = heldout.")
    omit_class: int | None = param(None, min=0, max=99, advanced=True,
                                   help="Drop this class from the student's transfer set (Hinton's "
                                        "omitted-digit experiment).")
    seed: int = param(0, min=0, max=2**31 - 1, help="Seed of the train/test/transfer split.",
                      advanced=True)
    data_dir: str = param("data", help="Folder (inside the data root) for downloaded data sets.",
                          advanced=True)
    download: bool = param(True, advanced=True, help="Try to download MNIST/CIFAR when absent.")


@dataclass
class ModelConfig:
    arch: str = param("mlp", choices=ARCHS, help="Model family.")
    depth: int = param(2, min=1, max=110,
                       help="Hidden layers (MLP), conv blocks (CNN), ResNet/WRN depth "
                            "(8/14/20/32/... ; WRN 16/40/...) or MobileNetV2 expansion ratio.")
    width: int = param(64, min=1, max=4096,
                       help="Units per layer (MLP), base channels (CNN/ResNet), resnetx4 stem "
                            "channels (32 = resnet8x4), WRN widen factor, MobileNetV2 width %.")
    dropout: float = param(0.0, min=0.0, max=0.9, step=0.05, advanced=True)


@dataclass
class TeacherConfig:
    source: str = param("train", choices=("train", "shipped", "checkpoint", "run", "none"),
                        help="Train the teacher now (cached by its config), use a shipped one, load a "
                             "checkpoint file, the student of a stored run (teacher-assistant "
                             "chains), or none (student alone).")
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="mlp", depth=2, width=256))
    epochs: int = param(30, min=1, max=1000, help="Epochs to train the teacher, when it is trained here.")
    lr: float = param(1e-3, min=0.0, max=10.0, min_exclusive=True, help="Teacher learning rate.")
    checkpoint: str = param("", help="Where the teacher's weights come from: a checkpoint file in the "
                                     "data folder, the name of a shipped teacher, or the id of a "
                                     "finished run, as the teacher's source says.")


@dataclass
class MethodConfig:
    name: str = param("hinton", help="Distillation method: how the student learns from the teacher.")
    # Declared as the plain-data form (a dict of knobs in a file, a URL, to_dict()); from
    # RunConfig.validate() on it holds the method's typed Params dataclass.
    params: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = param(20, min=1, max=10_000)
    batch_size: int = param(64, min=1, max=65_536)
    optimizer: str = param("adam", choices=("adam", "adamw", "sgd"))
    lr: float = param(1e-3, min=0.0, max=10.0, min_exclusive=True, help="Learning rate.")
    momentum: float = param(0.9, min=0.0, max=1.0, advanced=True)
    weight_decay: float = param(0.0, min=0.0, max=1.0, advanced=True)
    scheduler: str = param("none", choices=("none", "cosine", "step"), advanced=True)
    seed: int = param(0, min=0, max=2**31 - 1)
    device: str = param("auto", choices=("auto", "cpu", "cuda"), advanced=True)
    amp: bool = param(False, advanced=True,
                      help="bf16 mixed precision (autocast) for the student's steps. Used on CUDA "
                           "(device cuda, or auto on a GPU); on the CPU only with device cpu, for "
                           "testing the same code path (usually slower than float32 there).")
    channels_last: str = param("auto", choices=("auto", "on", "off"), advanced=True,
                               help="NHWC memory layout for convolutional models (faster convolutions "
                                    "with AMP on GPUs). auto = on for conv families on CUDA.")
    compile: bool = param(False, advanced=True,
                          help="torch.compile the student: the first steps are slow while it "
                               "compiles, later ones faster (mostly on GPUs).")
    log_every: int = param(20, min=1, max=100_000, advanced=True,
                           help="Steps between live metric points (one device sync each); an "
                                "epoch's tail shorter than half of it joins the point before.")
    baseline: bool = param(False, help="Also train the student alone (cached) to show what the "
                                       "teacher added.")
    boundary_metrics: str = param("auto", choices=("auto", "on", "off"), advanced=True,
                                  help="MagSim/AngSim against the teacher each epoch (an attack on "
                                       "128 probes: several times a digits epoch). auto = on for 2-D data "
                                       "and for bss, off otherwise.")
    checkpoint_every: int = param(1, min=0, max=10_000, advanced=True,
                                  help="Epochs between student checkpoints (0 = only at the end).")


@dataclass
class RunConfig:
    name: str = param("", help="Free label; not part of the config hash.")
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="mlp", depth=1, width=32))
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "RunConfig":
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text) if text.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError("", f"not valid JSON: {e}") from None
        except RecursionError:   # '[[[[...' : the parser recurses once per level
            raise ConfigError("", "not valid JSON: nested too deeply") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)   # libyaml's C dumper when present: far faster
        return yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        import yaml
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise ConfigError("", f"not valid YAML: {str(e).splitlines()[0]}") from None
        except RecursionError:
            raise ConfigError("", "not valid YAML: nested too deeply") from None
        return cls.from_dict(data or {})

    @classmethod
    def load(cls, path: str) -> "RunConfig":
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise ConfigError("", f"cannot read {path}: {e.strerror or e}") from None
        if len(raw) > MAX_CONFIG_BYTES:   # refuse, rather than parse a silently truncated file
            raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES} bytes; a config is "
                                  f"a few hundred bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("", f"{path} is not a UTF-8 text file") from None
        return cls.from_json(text) if path.endswith(".json") else cls.from_yaml(text)

    def copy(self) -> "RunConfig":
        return copy.deepcopy(self)

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """Return a validated copy with dotted keys set, e.g. {"method.params.T": 4, "train.epochs": 5}.

        A new ``method.name`` starts from that method's own default knobs (the old method's knobs
        mean nothing to it), then takes any ``method.params.*`` given in the same call."""
        data = self.to_dict()
        if "method.name" in overrides and overrides["method.name"] != self.method.name:
            data["method"]["params"] = {}
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return RunConfig.from_dict(data)

    # ---- validation and identity -------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Check every field and the rules across fields, in place; ``method.params`` becomes the
        method's typed Params. Raises ConfigError naming the first bad field."""
        validate_dataclass(self)
        try:
            method_cls = get_method_class(self.method.name)
        except KeyError as e:
            raise ConfigError("method.name", str(e.args[0])) from None
        self.method.params = from_dict(method_cls.Params, self.method.params, "method.params")
        self._cross_checks(method_cls)
        self._validated_as = self.to_dict()
        return self

    def validated(self) -> "RunConfig":
        """``self`` when ``validate()`` passed and no field changed since (one ``to_dict``, no
        re-validation), else ``validate()``. A field set after validation (``cfg.method.name =
        "ce"``) is noticed, so an edited config is never trusted."""
        if getattr(self, "_validated_as", None) == self.to_dict():
            return self
        return self.validate()

    def _cross_checks(self, method_cls) -> None:
        d, t, s = self.data, self.teacher, self.student
        image_data = d.name in IMAGE_DATASETS
        for path, m in (("teacher.model", t.model), ("student", s)):
            if m.arch in CONV_ARCHS and not image_data:
                raise ConfigError(f"{path}.arch", f"{m.arch} needs image data; {d.name} is not images "
                                                  f"(use mlp)")
            if (m.arch == "transformer") != (d.name == "text"):
                raise ConfigError(f"{path}.arch", "the transformer family goes with the text data set "
                                                  "and only with it")
            if m.arch == "resnet" and m.depth not in RESNET_DEPTHS:
                raise ConfigError(f"{path}.depth", f"resnet depth must be one of "
                                                   f"{', '.join(map(str, RESNET_DEPTHS))}; got {m.depth}")
            for knob, allowed in CIFAR_ARCHS.get(m.arch, {}).items():
                if getattr(m, knob) not in allowed:
                    raise ConfigError(f"{path}.{knob}", f"{m.arch} {knob} must be one of "
                                                        f"{', '.join(map(str, allowed))}; got "
                                                        f"{getattr(m, knob)}")
            if m.arch == "cnn" and m.depth > 6:
                raise ConfigError(f"{path}.depth", f"cnn depth must be <= 6, got {m.depth}")
            if m.arch == "mlp" and m.depth > 16:
                raise ConfigError(f"{path}.depth", f"mlp depth must be <= 16, got {m.depth}")
        if d.name in ("spirals", "blobs") or d.name in ("moons", "circles"):
            if d.name in ("moons", "circles") and d.n_classes != 2 and d.n_classes != DataConfig.n_classes:
                raise ConfigError("data.n_classes", f"{d.name} has 2 classes, got {d.n_classes}")
        # Methods that read hidden states / attention (distilbert, tinybert) name their families.
        archs = getattr(method_cls, "requires_arch", ())
        if archs and s.arch not in archs:
            raise ConfigError("student.arch", f"method {self.method.name!r} needs a "
                                              f"{' or '.join(archs)} student, got {s.arch}")
        if d.name == "text" and not method_cls.supports_multilabel:
            ok = [m for m in method_names() if get_method_class(m).supports_multilabel]
            raise ConfigError("method.name", f"{self.method.name} assumes one class per sample; the "
                                             f"text task is multi-label: use {', '.join(ok)}")
        if method_cls.needs_teacher and t.source == "none":
            raise ConfigError("teacher.source", f"method {self.method.name!r} needs a teacher; "
                                                f"choose train, shipped or checkpoint")
        if t.source in ("checkpoint", "shipped", "run") and not t.checkpoint:
            raise ConfigError("teacher.checkpoint", f"a {t.source} teacher needs a name or path")
        check_relative(d.data_dir, "data.data_dir")   # never a path outside the data folder
        if t.source in ("checkpoint", "shipped"):
            check_relative(t.checkpoint, "teacher.checkpoint")
        if t.source == "run" and not all(c.isalnum() or c in "-_" for c in t.checkpoint):
            raise ConfigError("teacher.checkpoint", f"a run id has only letters, digits, - and _; "
                                                    f"got {t.checkpoint!r}")
        if d.name == "hierarchy" and d.hier_superclasses > d.hier_classes:
            raise ConfigError("data.hier_superclasses", f"at most one superclass per class: "
                                                        f"{d.hier_superclasses} > {d.hier_classes} classes")

    def semantic_dict(self) -> dict:
        return semantic(self.to_dict())

    @property
    def hash(self) -> str:
        return config_hash(self.semantic_dict())

    @staticmethod
    def hash_of(data: dict) -> str:
        """The hash of a stored config (the ``to_dict()`` of a validated one) without rebuilding and
        re-validating it; equal to ``RunConfig.from_dict(data).hash``."""
        return config_hash(semantic(data))


def semantic(data: dict) -> dict:
    """What identifies a run in a config's plain data: everything but the free ``name``."""
    d = {k: v for k, v in data.items() if k != "name"}
    if not d.get("data", {}).get("val_fraction", 1):   # added later: at its default, older runs
        d["data"] = {k: v for k, v in d["data"].items() if k != "val_fraction"}  # keep their hash
    return d


def config_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(".".join(parts[: i + 1]), f"no such config section {part!r}")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(key, "not a config field")
    node[parts[-1]] = value


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (used for URLs, tables and sweeps)."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
