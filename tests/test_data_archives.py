"""Data sets brought by hand: tiny MNIST, FashionMNIST and CIFAR-10 archives in the official formats
load into the data folder and then through the normal data loading code; anything else (wrong
names, broken files, a tar that reaches outside its folder or holds a link, a pickle that would
run code) is refused with its reason and leaves the data folder as it was."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from kdengine import RunConfig, cli, load_data
from kdengine.data.archives import ArchiveRefused, import_files
from kdengine.data.fetch import listing

RNG = np.random.default_rng(0)


def idx_images(n: int, size: int = 28) -> bytes:
    return (b"\0\0\x08\x03" + struct.pack(">III", n, size, size)
            + RNG.integers(0, 256, n * size * size, dtype=np.uint8).tobytes())


def idx_labels(n: int) -> bytes:
    return b"\0\0\x08\x01" + struct.pack(">I", n) + bytes(i % 10 for i in range(n))


def mnist_files(n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    """The four gzipped IDX files of a tiny MNIST-format set."""
    return {"train-images-idx3-ubyte.gz": gzip.compress(idx_images(n_train)),
            "train-labels-idx1-ubyte.gz": gzip.compress(idx_labels(n_train)),
            "t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(n_test)),
            "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_labels(n_test))}


def opened(files: dict[str, bytes]) -> list:
    return [(name, io.BytesIO(data)) for name, data in files.items()]


def cifar_batch(n: int, first_label: int = 0) -> bytes:
    return pickle.dumps({"batch_label": "tiny", "labels": [(first_label + i) % 10 for i in range(n)],
                         "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "filenames": [f"img{i}.png" for i in range(n)]}, protocol=2)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def cifar_members(per_batch: int = 4) -> dict[str, bytes]:
    folder = "cifar-10-batches-py/"
    members = {folder + f"data_batch_{i}": cifar_batch(per_batch, i) for i in range(1, 6)}
    members[folder + "test_batch"] = cifar_batch(per_batch)
    members[folder + "batches.meta"] = pickle.dumps({"label_names": CIFAR_NAMES,
                                                     "num_cases_per_batch": per_batch}, protocol=2)
    return members


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz with these regular files, and symbolic links name -> target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def folder_listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- loads, then trains' data loading reads it -------------------------------------------------------
@pytest.mark.parametrize("name, folder, first_class", [("mnist", "MNIST", "0"),
                                                       ("fashion_mnist", "FashionMNIST", "T-shirt")])
def test_idx_archives_load_and_then_read_as_the_data_set(runs_dir, name, folder, first_class):
    said: list[tuple[float, str]] = []
    lines = import_files(name, opened(mnist_files()), progress=lambda f, t: said.append((f, t)))
    assert lines[-1].endswith("is ready.") and "train-images-idx3-ubyte.gz: 30 images" in lines
    assert said and said[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in said)   # progress shown
    raw = runs_dir / "data" / folder / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"])
    assert not list((runs_dir / "data").glob(".import-*"))         # no staging left behind
    data = load_data(RunConfig.from_dict({"data": {"name": name, "download": False}}).data)
    assert data.input_shape == (1, 28, 28) and len(data.test) == 10
    assert len(data.teacher_train) == 30 and data.class_names[0] == first_class
    row = next(r for r in listing() if r["name"] == name)
    assert row["present"] and row["checksums_ok"] is True


def test_cifar10_archive_loads_and_reads_through_the_safe_reader(runs_dir):
    files = {"cifar-10-python.tar.gz": tar_gz(cifar_members())}
    lines = import_files("cifar10", opened(files))
    assert "data_batch_1: 4 images" in lines and lines[-1] == "CIFAR-10 is ready."
    data = load_data(RunConfig.from_dict({"data": {"name": "cifar10", "download": False}}).data)
    assert data.input_shape == (3, 32, 32) and len(data.teacher_train) == 20 and len(data.test) == 4
    assert data.class_names == CIFAR_NAMES


def test_the_command_line_imports_and_refuses_in_one_line(runs_dir, tmp_path, capsys):
    paths = []
    for name, data in mnist_files().items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    assert cli.main(["data", "import", "mnist", *paths[:2]]) == 0   # the training half first
    out = capsys.readouterr().out
    assert "MNIST still needs t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz." in out
    assert cli.main(["data", "import", "mnist", *paths[2:]]) == 0
    assert "MNIST is ready." in capsys.readouterr().out
    cli.main(["data", "list"])
    assert "mnist          present" in capsys.readouterr().out
    assert cli.main(["data", "import", "mnist", str(tmp_path / "nothing.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing.gz" in err


# ---- refused, and nothing written ----------------------------------------------------------------------
def _refused(runs_dir, name: str, files: dict[str, bytes], words: str) -> None:
    before = folder_listing(runs_dir)
    with pytest.raises(ArchiveRefused, match=words):
        import_files(name, opened(files))
    assert folder_listing(runs_dir) == before


def test_wrong_idx_files_are_refused(runs_dir):
    good = mnist_files()
    (runs_dir / "data").mkdir()
    _refused(runs_dir, "mnist", {**good, "notes.gz": gzip.compress(b"hi")},
             "notes.gz: not a file of MNIST")
    _refused(runs_dir, "mnist", {**good, "train-labels-idx1-ubyte.gz": gzip.compress(idx_labels(29))},
             "train: 30 images but 29 labels")
    _refused(runs_dir, "mnist", {**good, "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_labels(10)[:-1] + b"\x0c")},
             "a label is outside 0..9")
    _refused(runs_dir, "mnist", {**good, "t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(10, 32))},
             "not 28 x 28 images")
    _refused(runs_dir, "mnist", {**good, "t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(10)[:-5])},
             "length does not match its header")
    _refused(runs_dir, "fashion_mnist", {**good, "train-images-idx3-ubyte.gz": good["train-images-idx3-ubyte.gz"][:50]},
             "not a whole gzip file")
    _refused(runs_dir, "mnist", {"train-images-idx3-ubyte.gz": gzip.compress(idx_labels(5))},
             "not labels|not 28 x 28")
    bomb = gzip.compress(b"\0" * (16 + 60_000 * 784 + 1))         # 47 MB of zeros in 46 kB
    _refused(runs_dir, "mnist", {"train-images-idx3-ubyte.gz": bomb}, "unpacks to more than")


def test_a_tar_reaching_outside_or_holding_links_is_refused(runs_dir, tmp_path):
    members = cifar_members()
    (runs_dir / "data").mkdir()
    outside = tmp_path.parent / "escaped"
    cases = [
        ({**members, "cifar-10-batches-py/../../../escaped": b"x"}, None, "points outside"),
        ({**members, "../escaped": b"x"}, None, "points outside"),
        ({**members, str(outside): b"x"}, None, "is an absolute path"),
        ({k: v for k, v in members.items() if not k.endswith("data_batch_1")},
         {"cifar-10-batches-py/data_batch_1": "/etc/passwd"}, "is a link"),
        (members, {"cifar-10-batches-py/readme.html": "../../escaped"}, "is a link"),
        ({**members, "cifar-10-batches-py/extra.py": b"print()"}, None, "is not in the CIFAR-10"),
        ({k: v for k, v in members.items() if not k.endswith("test_batch")}, None, "lacks test_batch"),
    ]
    for files, links, words in cases:
        _refused(runs_dir, "cifar10", {"cifar-10-python.tar.gz": tar_gz(files, links)}, words)
    assert not outside.exists()
    _refused(runs_dir, "cifar10", {"cifar-10-python.tar.gz": b"not a tar"}, "not a whole .tar.gz")
    _refused(runs_dir, "cifar10", {"cifar-10.tar.gz": tar_gz(members)}, "alone")


class _Runs:
    """A pickle that would make a folder when loaded by plain pickle."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return os.mkdir, (self.path,)


def test_a_batch_that_would_run_code_is_refused_unrun(runs_dir, tmp_path):
    (runs_dir / "data").mkdir()
    marker = tmp_path / "ran"
    members = cifar_members()
    members["cifar-10-batches-py/data_batch_3"] = pickle.dumps(
        {"data": _Runs(str(marker)), "labels": []}, protocol=2)
    _refused(runs_dir, "cifar10", {"cifar-10-python.tar.gz": tar_gz(members)},
             "data_batch_3: it asks for posix.mkdir")
    assert not marker.exists()
    members["cifar-10-batches-py/data_batch_3"] = pickle.dumps({"data": [1, 2], "labels": []})
    _refused(runs_dir, "cifar10", {"cifar-10-python.tar.gz": tar_gz(members)},
             "not N x 3072 bytes")
