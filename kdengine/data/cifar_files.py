"""CIFAR's pickled batches, read without running code.

The official CIFAR-10/100 files are Python pickles. ``pickle.load`` on a file that came through a
browser upload could run anything; this reader's unpickler builds only what the batches hold (dicts,
lists, numbers, strings and numpy arrays) and refuses every other class, and then the shapes, types
and label ranges are checked. The data loading code reads CIFAR on disk through it too, so no file
in the data folder is ever unpickled unrestricted.
"""
from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

# set -> (folder, training files, test files, meta file, label key, names key, classes)
LAYOUT = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                      ["test_batch"], "batches.meta", "labels", "label_names", 10),
          "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels",
                       "fine_label_names", 100)}
IMAGE_BYTES = 3 * 32 * 32

# numpy pickles an array as _reconstruct (from numpy.core in old files, numpy._core in new ones,
# whichever this numpy has), ndarray and dtype; Python 3 pickles of bytes use _codecs.encode.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
            ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode}


class BadBatch(ValueError):
    """A file that is not a CIFAR batch as the official archive has it."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise BadBatch(f"it asks for {module}.{name}, which a CIFAR batch never holds") from None


def loads(data: bytes) -> dict:
    """A CIFAR pickle's dict, its keys as text (the official files are Python 2 pickles)."""
    try:
        obj = _Unpickler(io.BytesIO(data), encoding="latin1").load()
    except BadBatch:
        raise
    except Exception as e:  # a truncated or foreign file: pickle raises many kinds
        raise BadBatch(f"it is not a readable pickle ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise BadBatch("it holds no dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def check_batch(obj: dict, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 3, 32, 32] uint8, labels [N] int64) of a batch dict, or BadBatch."""
    x, y = obj.get("data"), obj.get(label_key)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != IMAGE_BYTES:
        raise BadBatch(f"its 'data' is not N x {IMAGE_BYTES} bytes of images")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError):
        raise BadBatch(f"its '{label_key}' are not whole numbers") from None
    if y.shape != (len(x),):
        raise BadBatch(f"it has {len(x)} images and {y.size} '{label_key}'")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise BadBatch(f"a label is outside 0..{classes - 1}")
    return x.reshape(-1, 3, 32, 32), y


def check_meta(obj: dict, names_key: str, classes: int) -> list[str]:
    names = obj.get(names_key)
    if not isinstance(names, list) or len(names) != classes:
        raise BadBatch(f"its '{names_key}' is not a list of {classes} class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def read(root: Path, name: str):
    """(x_train, y_train, x_test, y_test, class names) of a CIFAR set under ``root``; images as
    uint8 [N, 3, 32, 32]."""
    folder, train, test, meta, label_key, names_key, classes = LAYOUT[name]
    base = Path(root) / folder

    def part(files):
        batches = []
        for f in files:
            try:
                batches.append(check_batch(loads((base / f).read_bytes()), label_key, classes))
            except BadBatch as e:
                raise BadBatch(f"{base / f}: {e}") from None
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    xtr, ytr = part(train)
    xte, yte = part(test)
    names = check_meta(loads((base / meta).read_bytes()), names_key, classes)
    return xtr, ytr, xte, yte, names


def present(root: Path, name: str) -> bool:
    folder, train, test, meta, *_ = LAYOUT[name]
    return all((Path(root) / folder / f).is_file() for f in [*train, *test, meta])
