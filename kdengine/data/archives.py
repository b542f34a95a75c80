"""Data sets brought by hand: MNIST, FashionMNIST and CIFAR-10 archives put into the data folder.

Offline, the real sets cannot download. The instructor gets the official archives elsewhere and loads
them here, through the Data page's upload or ``python -m kdengine data import NAME FILE...``:

* MNIST and FashionMNIST: the four ``.gz`` files (train and t10k, images and labels);
* CIFAR-10: ``cifar-10-python.tar.gz``.

Everything is checked before anything is written: each name must be one the set uses, each size
within bounds, each file in the format the loaders read (IDX headers and lengths, 28x28 images,
labels 0-9, as many images as labels; CIFAR's batches through :mod:`kdengine.data.cifar_files`,
which never runs code from a pickle). A tar member is never extracted by its own path: only the
known names are read, and a link, an absolute name or one that leaves its folder refuses the whole
archive. Files are unpacked into a private folder inside the data folder and moved to where the
loaders look (``MNIST/raw/...``, ``cifar-10-batches-py/...``) only once all of them passed, so a
refused import changes nothing.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from kdengine.data import cifar_files
from kdengine.data.datasets import DataUnavailable
from kdengine.data.fetch import _IDX, data_dir, present, record_checksums

TITLES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR-10"}
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}   # torchvision's folder names
IDX_FILES = [f"{f}.gz" for f in _IDX]
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
MAX_SAMPLES = {"train": 60_000, "t10k": 10_000}        # the official sets' sizes
MAX_GZ_BYTES = 64 << 20            # FashionMNIST's training images, the largest .gz: 26 MB
MAX_TAR_BYTES = 256 << 20          # the official CIFAR-10 archive: 163 MB
MAX_MEMBER_BYTES = 40 << 20        # one CIFAR-10 batch: 31 MB
Progress = Callable[[float, str], None]


class ArchiveRefused(DataUnavailable):
    """An archive or file that is not what the data set uses; nothing was written."""


def expected_files(name: str) -> list[str]:
    """The file names a set is loaded from."""
    _check_name(name)
    return [CIFAR10_ARCHIVE] if name == "cifar10" else list(IDX_FILES)


def _check_name(name: str) -> None:
    if name not in TITLES:
        raise ArchiveRefused(f"cannot load {name!r} from archives; one of {', '.join(TITLES)}")


def import_files(name: str, files: Sequence[tuple[str, BinaryIO]], root: Path | None = None,
                 progress: Progress | None = None) -> list[str]:
    """Check ``files`` ((file name, readable binary file) pairs) as the data set ``name`` and put
    them into the data folder; returns what was done, in lines. ArchiveRefused, naming the file and
    the reason, when anything is wrong (then nothing is written)."""
    _check_name(name)
    if not files:
        raise ArchiveRefused(f"no files given; {TITLES[name]} is loaded from "
                             f"{', '.join(expected_files(name))}")
    root = Path(root) if root is not None else data_dir()
    root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda fraction, text: None)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))   # same disk: moves are renames
    try:
        stage = _stage_cifar10 if name == "cifar10" else _stage_idx
        moves, lines = stage(name, files, root, staging, say)
        for src, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if present(name, root):
        record_checksums(name, root)
        lines.append(f"{TITLES[name]} is ready.")
    elif name in IDX_FOLDERS:
        missing = [f for f in IDX_FILES if not (root / _idx_dest(name, f)).is_file()]
        lines.append(f"{TITLES[name]} still needs {', '.join(missing)}.")
    say(1.0, "done")
    return lines


def import_paths(name: str, paths: Sequence[str | Path], root: Path | None = None,
                 progress: Progress | None = None) -> list[str]:
    """:func:`import_files` on files on disk (the command line)."""
    opened = []
    try:
        for p in paths:
            try:
                opened.append((str(p), open(p, "rb")))
            except OSError as e:
                raise ArchiveRefused(f"{p}: cannot be read ({e.strerror or e})") from None
        return import_files(name, opened, root, progress)
    finally:
        for _, f in opened:
            f.close()


# ---- MNIST, FashionMNIST: four gzipped IDX files ----------------------------------------------------
def _idx_dest(name: str, gz_name: str) -> Path:
    return Path(IDX_FOLDERS[name]) / "raw" / gz_name.removesuffix(".gz")


def _size(f: BinaryIO) -> int:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def _stage_idx(name: str, files, root: Path, staging: Path, say: Progress):
    staged: dict[str, tuple[Path, int]] = {}
    lines = []
    for i, (given, f) in enumerate(files):
        base = Path(given).name
        if base not in IDX_FILES:
            raise ArchiveRefused(f"{base}: not a file of {TITLES[name]}; it is loaded from "
                                 f"{', '.join(IDX_FILES)}")
        raw = base.removesuffix(".gz")
        if raw in staged:
            raise ArchiveRefused(f"{base} is given twice")
        if _size(f) > MAX_GZ_BYTES:
            raise ArchiveRefused(f"{base}: larger than any {TITLES[name]} file "
                                 f"({MAX_GZ_BYTES >> 20} MB at most)")
        say(i / len(files), f"checking {base}")
        out = staging / raw
        _gunzip(f, out, base)
        staged[raw] = (out, _check_idx(out, base))
        lines.append(f"{base}: {staged[raw][1]} {'images' if '-images-' in raw else 'labels'}")
    for split in MAX_SAMPLES:            # images and labels of a split must agree
        pair = [f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"]
        counts = [staged[p][1] if p in staged else _idx_count(root / _idx_dest(name, p + ".gz"))
                  for p in pair]
        if None not in counts and counts[0] != counts[1] and any(p in staged for p in pair):
            raise ArchiveRefused(f"{split}: {counts[0]} images but {counts[1]} labels; give the "
                                 f"images and labels of the same release")
    return [(out, root / _idx_dest(name, raw + ".gz")) for raw, (out, _) in staged.items()], lines


def _gunzip(f: BinaryIO, out: Path, base: str) -> None:
    """Unpack ``f`` into ``out``, refusing anything larger than an official file unpacks to."""
    limit = 16 + MAX_SAMPLES["train"] * 28 * 28
    written = 0
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as g, open(out, "wb") as o:
            while chunk := g.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise ArchiveRefused(f"{base}: unpacks to more than any MNIST file "
                                         f"({limit} bytes)")
                o.write(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ArchiveRefused(f"{base}: not a whole gzip file ({e})") from None


def _idx_header(f: BinaryIO, base: str) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] not in (1, 3):
        raise ArchiveRefused(f"{base}: not an IDX file of bytes (the MNIST format)")
    raw = f.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        raise ArchiveRefused(f"{base}: its header is cut short")
    return struct.unpack(f">{head[3]}I", raw)


def _check_idx(path: Path, base: str) -> int:
    """The number of samples in an unpacked IDX file, after checking it is what its name says."""
    images = "-images-" in base
    split = base.split("-", 1)[0]
    with open(path, "rb") as f:
        dims = _idx_header(f, base)
        if images and (len(dims) != 3 or dims[1:] != (28, 28)):
            raise ArchiveRefused(f"{base}: holds {' x '.join(map(str, dims))} values, not 28 x 28 "
                                 f"images")
        if not images and len(dims) != 1:
            raise ArchiveRefused(f"{base}: holds {' x '.join(map(str, dims))} values, not labels")
        n = dims[0]
        if not 1 <= n <= MAX_SAMPLES[split]:
            raise ArchiveRefused(f"{base}: {n} samples; the {split} set has 1 to "
                                 f"{MAX_SAMPLES[split]}")
        body = int(np.prod(dims))
        if path.stat().st_size != 4 + 4 * len(dims) + body:
            raise ArchiveRefused(f"{base}: its length does not match its header ({n} samples)")
        if not images and int(np.frombuffer(f.read(), np.uint8).max()) > 9:
            raise ArchiveRefused(f"{base}: a label is outside 0..9")
    return n


def _idx_count(path: Path) -> int | None:
    """The sample count in the header of an IDX file already in place, or None."""
    try:
        with open(path, "rb") as f:
            return _idx_header(f, path.name)[0]
    except (OSError, ArchiveRefused):
        return None


# ---- CIFAR-10: one tar.gz of pickled batches ----------------------------------------------------------
def _member_path(member: tarfile.TarInfo) -> str:
    """A tar member's name as a relative path, or ArchiveRefused for links, special files, absolute
    names and names that leave the archive's folder."""
    name = member.name
    if member.issym() or member.islnk():
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {name!r} is a link; the official archive has none")
    if not (member.isfile() or member.isdir()):
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {name!r} is not a plain file")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {name!r} is an absolute path")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {name!r} points outside the archive's folder")
    return "/".join(parts)


def _stage_cifar10(name: str, files, root: Path, staging: Path, say: Progress):
    folder, train, test, meta, label_key, names_key, classes = cifar_files.LAYOUT["cifar10"]
    wanted, extra = {*train, *test, meta}, {"readme.html"}
    bases = [Path(given).name for given, _ in files]
    if bases != [CIFAR10_ARCHIVE]:
        raise ArchiveRefused(f"{', '.join(bases)}: CIFAR-10 is loaded from {CIFAR10_ARCHIVE} "
                             f"alone (the python version of the archive)")
    f = files[0][1]
    if _size(f) > MAX_TAR_BYTES:
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: larger than the official archive")
    staged: dict[str, Path] = {}
    lines = []
    try:
        with tarfile.open(fileobj=f, mode="r:gz") as tar:
            for member in tar:
                rel = _member_path(member)
                if member.isdir() and rel in ("", folder):
                    continue
                parent, _, leaf = rel.partition("/")
                if member.isdir() or parent != folder or leaf not in wanted | extra:
                    raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {member.name!r} is not in the CIFAR-10 "
                                         f"archive; is this the python version?")
                if leaf in staged:
                    raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {leaf} is in it twice")
                if leaf in extra:
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {leaf} is larger than a CIFAR-10 batch")
                say(len(staged) / len(wanted), f"checking {leaf}")
                data = tar.extractfile(member).read()
                try:
                    obj = cifar_files.loads(data)
                    if leaf == meta:
                        cifar_files.check_meta(obj, names_key, classes)
                    else:
                        n = len(cifar_files.check_batch(obj, label_key, classes)[1])
                        lines.append(f"{leaf}: {n} images")
                except cifar_files.BadBatch as e:
                    raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: {leaf}: {e}") from None
                staged[leaf] = staging / leaf
                staged[leaf].write_bytes(data)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: not a whole .tar.gz archive ({e})") from None
    missing = sorted(wanted - set(staged))
    if missing:
        raise ArchiveRefused(f"{CIFAR10_ARCHIVE}: lacks {', '.join(missing)}")
    return [(p, root / folder / leaf) for leaf, p in staged.items()], lines


__all__ = ["ArchiveRefused", "CIFAR10_ARCHIVE", "IDX_FILES", "TITLES", "expected_files",
           "import_files", "import_paths"]
