"""Shared fixtures. Every test session gets its own data folder, so tests never touch ./kd_runs.
Plain helper functions (AppTest drivers, stored runs, a live app server) are in ``support.py``."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _kd_runs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kd_runs")
    old = os.environ.get("KD_RUNS_DIR")
    os.environ["KD_RUNS_DIR"] = str(d)
    import torch
    torch.set_num_threads(1)
    yield d
    if old is None:
        os.environ.pop("KD_RUNS_DIR", None)
    else:
        os.environ["KD_RUNS_DIR"] = old


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A fresh, empty data folder for one test."""
    monkeypatch.setenv("KD_RUNS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def engine(runs_dir):
    """An Engine with one worker on a fresh data folder, shut down after the test."""
    from kdengine import Engine, Store
    eng = Engine(store=Store(runs_dir), max_workers=1)
    yield eng
    eng.shutdown()


@pytest.fixture
def tiny_cfg():
    """A digits config that trains in about a second."""
    from kdengine import RunConfig
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 64},
                    "epochs": 3},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": "hinton", "params": {"T": 4.0}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0, "log_every": 5},
    })


# The web app serves with worker processes by default; tests build many engines, so they use
# threads in this process unless a test asks for processes itself.
os.environ.setdefault("KD_SERVE", "threads")
