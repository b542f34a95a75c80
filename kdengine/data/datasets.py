"""Data sets and transfer sets.

Everything is loaded into tensors once (these data sets are small) and cached per data config, so a
training step is an index into a tensor rather than a DataLoader round trip. Splits are deterministic
under ``DataConfig.seed``.

Real data sets (MNIST, FashionMNIST, CIFAR-10/100) come from torchvision into the data folder; when
the files are absent and the network is not there, loading fails with one clear line and the caller
can fall back to digits or the 2-D toys, which need no network. The synthetic CIFAR-shaped sets
(``cifar10_synthetic``, ``cifar100_synthetic``) stand in for CIFAR when timing: their images are
drawn from a seed, and their class names and notes say they are synthetic.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from kdengine.core.config import DataConfig, SYNTHETIC_DATASETS, TOY_DATASETS, config_hash
from kdengine.core.knobs import ConfigError
from kdengine.core.paths import inside_root
from kdengine.data import cifar_files


class DataUnavailable(RuntimeError):
    """A data set that is not on disk and could not be downloaded."""


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    kind: str                       # "2d", "image" or "text"
    input_shape: tuple
    n_classes: int
    class_names: list[str]
    teacher_train: Split
    transfer: Split
    labeled: Tensor                 # bool mask over transfer: which labels the student may use
    test: Split
    val: Split | None = None        # held out from teacher and student (data.val_fraction > 0)
    notes: list[str] = field(default_factory=list)
    mean: Tensor | None = None      # normalisation, to show images in their original range
    std: Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_labeled(self) -> int:
        return int(self.labeled.sum())

    def denormalise(self, x: Tensor) -> Tensor:
        if self.mean is None:
            return x
        return x * self.std + self.mean


# ---------------------------------------------------------------------------------------------
# raw loaders: return (x_train, y_train, x_test, y_test, kind, class_names), float32 / int64 numpy
# ---------------------------------------------------------------------------------------------
def _spirals(n: int, n_classes: int, noise: float, rng: np.random.Generator):
    per = n // n_classes
    xs, ys = [], []
    for c in range(n_classes):
        r = np.linspace(0.05, 1.0, per)
        theta = np.linspace(c * 2 * math.pi / n_classes, c * 2 * math.pi / n_classes + 3.5, per)
        theta = theta + rng.normal(0, noise * 0.5, per)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], 1))
        ys.append(np.full(per, c))
    return np.concatenate(xs), np.concatenate(ys)


def _toy(cfg: DataConfig):
    from sklearn import datasets as skd
    rng = np.random.default_rng(cfg.seed)
    rs = int(rng.integers(0, 2**31 - 1))
    if cfg.name == "moons":
        x, y = skd.make_moons(cfg.n_samples, noise=cfg.noise, random_state=rs)
    elif cfg.name == "circles":
        x, y = skd.make_circles(cfg.n_samples, noise=cfg.noise, factor=0.5, random_state=rs)
    elif cfg.name == "blobs":
        x, y = skd.make_blobs(cfg.n_samples, centers=cfg.n_classes, cluster_std=1.0 + 2 * cfg.noise,
                              random_state=rs)
    else:
        x, y = _spirals(cfg.n_samples, cfg.n_classes, cfg.noise, rng)
    k = int(y.max()) + 1
    return x.astype(np.float32), y.astype(np.int64), [f"class {i}" for i in range(k)]


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return x, d.target.astype(np.int64), [str(i) for i in range(10)]


_TV = {"mnist": ("MNIST", [str(i) for i in range(10)]),
       "fashion_mnist": ("FashionMNIST", ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
       "cifar10": ("CIFAR10", ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck"]),
       "cifar100": ("CIFAR100", [])}        # names come from the files (train.classes)


def _torchvision(cfg: DataConfig):
    import torchvision
    cls_name, names = _TV[cfg.name]
    root = inside_root(cfg.data_dir, "data.data_dir")
    cls = getattr(torchvision.datasets, cls_name)
    cifar = cfg.name in cifar_files.LAYOUT
    try:
        if not (cifar and cifar_files.present(root, cfg.name)):
            train = cls(str(root), train=True, download=cfg.download)
            test = cls(str(root), train=False, download=cfg.download)
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError variously
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataUnavailable(
            f"{cls_name} is not in {root} and could not be downloaded ({reason}); "
            f"put the files there or use digits or a 2-D toy data set") from None
    if cifar:   # read by our checked reader: files brought by hand are never unpickled freely
        try:
            xtr, ytr, xte, yte, found = cifar_files.read(root, cfg.name)
        except (cifar_files.BadBatch, OSError) as e:
            raise DataUnavailable(f"{cls_name} in {root} could not be read: {e}") from None
        return (xtr.astype(np.float32) / 255.0, ytr, xte.astype(np.float32) / 255.0, yte,
                names or found)

    def arr(ds):
        x = np.asarray(ds.data, dtype=np.float32) / 255.0
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.asarray(ds.targets, dtype=np.int64)
    xtr, ytr = arr(train)
    xte, yte = arr(test)
    return xtr, ytr, xte, yte, names or list(train.classes)


def _synthetic_cifar(cfg: DataConfig):
    """Random 3x32x32 images, ``n_samples`` to train on and a test set of a fifth as many.

    Each class has a smooth random colour pattern (a 4x4 grid upsampled) and every image is its
    class's pattern plus noise: learnable, so losses move, but meaningless; for timing only."""
    k = 100 if cfg.name == "cifar100_synthetic" else 10
    g = torch.Generator().manual_seed(cfg.seed)
    patterns = torch.nn.functional.interpolate(torch.randn(k, 3, 4, 4, generator=g), size=32,
                                               mode="bilinear", align_corners=False)
    n_test = max(k, cfg.n_samples // 5)

    def draw(n):
        y = torch.arange(n) % k                     # every class, evenly
        y = y[torch.randperm(n, generator=g)]
        x = patterns[y] + (1.0 + cfg.noise) * torch.randn(n, 3, 32, 32, generator=g)
        return x.numpy(), y.numpy()
    xtr, ytr = draw(cfg.n_samples)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte, [f"synthetic {i}" for i in range(k)]


# ---------------------------------------------------------------------------------------------
def _strata(y: np.ndarray) -> np.ndarray:
    """Class ids to stratify on; multi-hot labels (text) stratify on their label pattern."""
    if y.ndim == 1:
        return y
    return (y > 0.5).astype(np.int64) @ (1 << np.arange(y.shape[1], dtype=np.int64))


def _split(n: int, fraction: float, rng: np.random.Generator, y: np.ndarray):
    """Stratified split: returns (idx_a, idx_b) with roughly ``fraction`` of each class in b."""
    y = _strata(y)
    a, b = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        b.append(idx[:k])
        a.append(idx[k:])
    ia, ib = np.concatenate(a), np.concatenate(b)
    rng.shuffle(ia)
    rng.shuffle(ib)
    return ia, ib


def _stratified_labels(y: np.ndarray, n_labels: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask with ``n_labels`` labelled samples spread as evenly as possible over classes."""
    y = _strata(y)
    classes = np.unique(y)
    mask = np.zeros(len(y), bool)
    per = [n_labels // len(classes) + (1 if i < n_labels % len(classes) else 0)
           for i in range(len(classes))]
    for c, k in zip(classes, per):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        mask[idx[:k]] = True
    return mask


def _load_raw(cfg: DataConfig):
    rng = np.random.default_rng(cfg.seed)
    if cfg.name in TOY_DATASETS:
        x, y, names = _toy(cfg)
        itr, ite = _split(len(y), cfg.test_fraction, rng, y)
        return x[itr], y[itr], x[ite], y[ite], "2d", names
    if cfg.name == "digits":
        x, y, names = _digits()
        itr, ite = _split(len(y), cfg.test_fraction, rng, y)
        return x[itr], y[itr], x[ite], y[ite], "image", names
    if cfg.name == "hierarchy":
        from kdengine.data import hierarchy
        x, y, names = hierarchy.generate(cfg.n_samples, cfg.hier_classes, cfg.hier_superclasses,
                                         cfg.noise, rng)
        itr, ite = _split(len(y), cfg.test_fraction, rng, y)
        return x[itr], y[itr], x[ite], y[ite], "image", names
    if cfg.name in _TV:
        xtr, ytr, xte, yte, names = _torchvision(cfg)
        return xtr, ytr, xte, yte, "image", names
    if cfg.name in SYNTHETIC_DATASETS:
        xtr, ytr, xte, yte, names = _synthetic_cifar(cfg)
        return xtr, ytr, xte, yte, "image", names
    if cfg.name == "text":
        from kdengine.data import text  # the offline text task
        return text.load_raw(cfg)
    raise ConfigError("data.name", f"unknown data set {cfg.name!r}")


def _normalise(xtr: np.ndarray, others: list[np.ndarray], kind: str):
    if kind == "text":
        return xtr, others, None, None
    if kind == "2d":
        mean = xtr.mean(0, keepdims=True)
        std = xtr.std(0, keepdims=True) + 1e-6
    else:  # per channel
        mean = xtr.mean((0, 2, 3), keepdims=True)
        std = xtr.std((0, 2, 3), keepdims=True) + 1e-6
    f = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return f(xtr), [f(o) for o in others], torch.from_numpy(mean[0]), torch.from_numpy(std[0])


_DATA_KEYS = ("name", "n_samples", "noise", "n_classes", "hier_classes", "hier_superclasses",
              "test_fraction", "transfer", "n_labels",
              "heldout_fraction", "omit_class", "seed", "data_dir")


def data_key(cfg: DataConfig) -> str:
    return config_hash(_with_val({k: getattr(cfg, k) for k in _DATA_KEYS}, cfg))


def _with_val(d: dict, cfg: DataConfig) -> dict:
    """Keys (and cached teachers) made before validation splits existed stay valid at 0."""
    if cfg.val_fraction:
        d["val_fraction"] = cfg.val_fraction
    return d


def teacher_data_key(cfg: DataConfig) -> str:
    """What the teacher's training set depends on (not the student's transfer choices)."""
    keys = ["name", "n_samples", "noise", "n_classes", "test_fraction", "seed", "data_dir"]
    if cfg.name == "hierarchy":   # only then: the teacher keys of other data sets stay as they were
        keys += ["hier_classes", "hier_superclasses"]
    d = {k: getattr(cfg, k) for k in keys}
    d["heldout"] = cfg.heldout_fraction if cfg.transfer == "heldout" else None
    return config_hash(_with_val(d, cfg))


def load_data(cfg: DataConfig) -> DataBundle:
    """The data bundle for a config (cached; treat the tensors as read-only)."""
    key = data_key(cfg)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    bundle = _build(dataclasses.replace(cfg))
    with _cache_lock:
        _cache[key] = bundle
        while len(_cache) > 8:
            _cache.popitem(last=False)
    return bundle


_cache: "OrderedDict[str, DataBundle]" = OrderedDict()
_cache_lock = threading.Lock()


def _build(cfg: DataConfig) -> DataBundle:
    xtr, ytr, xte, yte, kind, names = _load_raw(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    notes: list[str] = []
    xtr, ytr, xva, yva = _carve_val(cfg, kind, xtr, ytr)
    if xva is not None:
        notes.append(f"{len(yva)} training samples are held out for validation (validation "
                     f"accuracy); neither teacher nor student trains on them.")
    if cfg.name in SYNTHETIC_DATASETS:
        notes.append(f"{cfg.name}: synthetic CIFAR-shaped images drawn from a seed, for timing "
                     f"only; accuracies on it say nothing about distillation.")
    n_classes = len(names)
    # teacher's set and the student's transfer set
    if cfg.transfer == "heldout":
        it, ih = _split(len(ytr), cfg.heldout_fraction, rng, ytr)
        x_teacher, y_teacher, x_tr, y_tr = xtr[it], ytr[it], xtr[ih], ytr[ih]
        labeled = np.ones(len(y_tr), bool)
        notes.append(f"The teacher trains on {len(it)} samples; the student learns from a held-out "
                     f"split of {len(ih)} the teacher never saw.")
    else:
        x_teacher, y_teacher, x_tr, y_tr = xtr, ytr, xtr, ytr
        if cfg.transfer == "unlabeled":
            labeled = np.zeros(len(y_tr), bool)
            notes.append("Transfer set is unlabelled: the hard (label) weight is forced to 0; the "
                         "student learns from the teacher's outputs alone.")
        elif cfg.transfer == "labels":
            if cfg.n_labels > len(y_tr):
                raise ConfigError("data.n_labels", f"n_labels must be <= {len(y_tr)} (the training "
                                                   f"set size), got {cfg.n_labels}")
            labeled = _stratified_labels(y_tr, cfg.n_labels, rng)
            notes.append(f"Only {int(labeled.sum())} of {len(y_tr)} transfer samples keep their "
                         f"label; the teacher's soft targets cover all of them.")
        else:
            labeled = np.ones(len(y_tr), bool)
    if cfg.omit_class is not None:
        if cfg.omit_class >= n_classes:
            raise ConfigError("data.omit_class", f"omit_class must be < {n_classes}, got "
                                                 f"{cfg.omit_class}")
        # multi-label data: drop every sample that carries the omitted label
        keep = (y_tr != cfg.omit_class) if y_tr.ndim == 1 else (y_tr[:, cfg.omit_class] < 0.5)
        x_tr, y_tr, labeled = x_tr[keep], y_tr[keep], labeled[keep]
        notes.append(f"Class {names[cfg.omit_class]!r} is removed from the student's transfer set.")
    others = [x_tr, xte] + ([xva] if xva is not None else [])
    x_teacher, (x_tr, xte_n, *xva_n), mean, std = _normalise(x_teacher, others, kind)
    t = torch.from_numpy
    return DataBundle(kind=kind, input_shape=tuple(x_teacher.shape[1:]), n_classes=n_classes,
                      class_names=list(names), teacher_train=Split(t(x_teacher), t(y_teacher)),
                      transfer=Split(t(x_tr), t(y_tr)), labeled=t(labeled),
                      test=Split(t(xte_n), t(yte)),
                      val=Split(t(xva_n[0]), t(yva)) if xva is not None else None,
                      notes=notes, mean=mean, std=std)


def _carve_val(cfg: DataConfig, kind: str, x: np.ndarray, y: np.ndarray):
    """(x_train, y_train, x_val, y_val): a stratified validation split taken off the training set
    before the teacher's and the student's sets are drawn, so neither ever trains on it. Its own
    random stream: the other splits of a config without validation do not move."""
    if not cfg.val_fraction:
        return x, y, None, None
    if kind == "text":
        raise ConfigError("data.val_fraction", "the text task has no validation split (use 0)")
    keep, val = _split(len(y), cfg.val_fraction, np.random.default_rng(cfg.seed + 2), y)
    if len(val) == 0 or len(keep) == 0:
        raise ConfigError("data.val_fraction", f"val_fraction {cfg.val_fraction} leaves no "
                                               f"validation or no training samples")
    return x[keep], y[keep], x[val], y[val]


def fallback_config(cfg: DataConfig) -> DataConfig:
    """The offline stand-in for a data set that could not be loaded: digits for images."""
    return dataclasses.replace(cfg, name="digits")
