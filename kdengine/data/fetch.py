"""Class prep: download the real data sets into the data folder before a class, list what is there.

``python -m kdengine data fetch mnist fashion_mnist cifar10`` downloads with torchvision (which
checks each archive's MD5) into ``<data folder>/data`` (the default ``data.data_dir``) and records
a SHA-256 of every file in ``checksums.json``; ``data list`` shows which sets are present and
whether their files still match. Offline, fetch first checks that a download host answers, and
fails at once with one line naming the hosts it could not reach.
"""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from kdengine.core.paths import inside_root
from kdengine.data.datasets import _TV, DataUnavailable

MANIFEST = "checksums.json"
CONNECT_TIMEOUT_S = 5.0


def data_dir(rel: str = "data") -> Path:
    return inside_root(rel, "data.data_dir")


def _dataset_class(name: str):
    if name not in _TV:
        raise DataUnavailable(f"unknown data set {name!r}; fetch one of {', '.join(_TV)}")
    import torchvision
    return getattr(torchvision.datasets, _TV[name][0])


# Where torchvision downloads each set from, and the files it leaves (checked without importing
# torchvision, which is slow to import on a busy machine: an offline fetch must fail fast).
SOURCES = {"mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                     "http://yann.lecun.com/exdb/mnist/"],
           "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
           "cifar10": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]}
_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte"]
FILES = {"mnist": [f"MNIST/raw/{f}" for f in _IDX],
         "fashion_mnist": [f"FashionMNIST/raw/{f}" for f in _IDX],
         "cifar10": [f"cifar-10-batches-py/{f}" for f in
                     [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]]}


def source_urls(name: str) -> list[str]:
    if name not in SOURCES:
        raise DataUnavailable(f"unknown data set {name!r}; fetch one of {', '.join(SOURCES)}")
    return SOURCES[name]


def reachable(urls: list[str], timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when any of the hosts accepts a connection (DNS and TCP only, nothing downloaded)."""
    for u in urls:
        p = urlparse(u)
        try:
            socket.create_connection((p.hostname, p.port or (443 if p.scheme == "https" else 80)),
                                     timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def present(name: str, root: Path) -> bool:
    return all((root / f).is_file() for f in FILES[name])


def _files(name: str, root: Path) -> list[Path]:
    return [root / f for f in FILES[name] if (root / f).is_file()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(root: Path) -> dict:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def record_checksums(name: str, root: Path) -> int:
    """Record a SHA-256 of each of the set's files (``data list`` checks them); returns how many."""
    manifest = _manifest(root)
    manifest[name] = {str(p.relative_to(root)): _sha256(p) for p in _files(name, root)}
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(root / MANIFEST)
    return len(manifest[name])


def fetch(names: list[str], root: Path | None = None, say=print) -> None:
    """Download each named set unless present; raise DataUnavailable naming unreachable hosts."""
    root = root or data_dir()
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        source_urls(n)                  # refuses an unknown name before anything else
    todo = [n for n in names if not present(n, root)]
    for n in names:
        if n not in todo:
            say(f"{n}: already present in {root}")
    unreachable = [(n, source_urls(n)) for n in todo]
    unreachable = [(n, urls) for n, urls in unreachable if not reachable(urls)]
    if unreachable:
        hosts = sorted({urlparse(u).hostname for _, urls in unreachable for u in urls})
        raise DataUnavailable(f"could not reach {', '.join(hosts)} to fetch "
                              f"{', '.join(n for n, _ in unreachable)} (offline?)")
    from kdengine.core.progress import track   # a bar with ETA over the sets, on a terminal only
    for n in track(todo, "data sets", unit="set"):
        cls = _dataset_class(n)
        say(f"{n}: downloading into {root}")
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
        say(f"{n}: done, {record_checksums(n, root)} files checksummed")


def listing(root: Path | None = None, verify: bool = True) -> list[dict]:
    """One row per known real data set: present?, size on disk, checksums ok? (None when none are
    recorded, or ``verify`` is off: hashing CIFAR takes a while)"""
    root = root or data_dir()
    manifest = _manifest(root)
    rows = []
    for n in SOURCES:
        files = _files(n, root)
        ok = None
        if verify and n in manifest:
            ok = all((root / f).is_file() and _sha256(root / f) == h
                     for f, h in manifest[n].items())
        rows.append({"name": n, "present": present(n, root),
                     "bytes": sum(p.stat().st_size for p in files), "checksums_ok": ok})
    return rows
