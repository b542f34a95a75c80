"""AppTest of the Data page: a student is told it is for the instructor and gets no upload; the
instructor sees which sets are here, loads a set's archives through the upload (then it is listed
as here), and a refused file is an error in the page with nothing loaded."""
from __future__ import annotations

import gzip

import pytest

from support import app_test
from tests.test_data_archives import mnist_files

PAGE = "app_pages/data.py"
TOKEN = "data-page-token"


@pytest.fixture(autouse=True)
def _instructor_token(monkeypatch):
    monkeypatch.setenv("KD_INSTRUCTOR_TOKEN", TOKEN)


def here(at, title: str) -> str:
    df = at.dataframe[0].value
    return df.loc[df["data set"] == title, "here"].item()


def test_a_student_is_refused(runs_dir):
    at = app_test(PAGE)
    assert "for the instructor" in at.info[0].value
    assert not at.get("file_uploader") and not at.dataframe


def test_the_instructor_loads_mnist_from_its_archives(runs_dir):
    at = app_test(PAGE, query={"tok": TOKEN})
    assert here(at, "MNIST") == "missing" and here(at, "CIFAR-10") == "missing"
    assert at.button(key="data_load").disabled                     # nothing chosen yet
    at.file_uploader(key="data_files").set_value(
        [(name, data, "application/gzip") for name, data in mnist_files().items()]).run()
    at.button(key="data_load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "MNIST is ready." in at.success[0].value
    assert here(at, "MNIST") == "yes"
    assert (runs_dir / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_a_refused_file_is_an_error_in_the_page(runs_dir):
    at = app_test(PAGE, query={"tok": TOKEN})
    at.selectbox(key="data_name").set_value("fashion_mnist").run()
    at.file_uploader(key="data_files").set_value(
        ("holiday-photos.gz", gzip.compress(b"not a data set"), "application/gzip")).run()
    at.button(key="data_load").click().run()
    assert "Nothing was loaded" in at.error[0].value and "holiday-photos.gz" in at.error[0].value
    assert here(at, "FashionMNIST") == "missing"
    assert not (runs_dir / "data" / "FashionMNIST").exists()
