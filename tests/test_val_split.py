"""The validation split (data.val_fraction): disjoint from every set a model trains or is tested
on, stratified, measured as val_acc each epoch, and absent (same hash, same splits) at 0."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.events import Metrics
from kdengine.core.config import DataConfig, RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.data.datasets import load_data
from kdengine.run.engine import train


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def test_val_split_is_disjoint_and_stratified():
    plain = load_data(DataConfig(name="digits"))
    data = load_data(DataConfig(name="digits", val_fraction=0.2, transfer="labels", n_labels=50))
    assert plain.val is None and data.val is not None
    n_train = len(plain.transfer)
    assert len(data.val) + len(data.teacher_train) == n_train
    assert abs(len(data.val) - 0.2 * n_train) <= 10                    # ~20%, per class rounding
    assert len(data.test) == len(plain.test)                           # the test set is untouched
    # normalised with the training set's statistics, so compare rows after the same transform
    val = _rows(data.val.x)
    assert not val & _rows(data.teacher_train.x)
    assert not val & _rows(data.transfer.x)
    assert not val & _rows(data.test.x)
    counts = torch.bincount(data.val.y, minlength=10)
    assert counts.min() >= 0.15 * n_train / 10                         # every class is there
    assert int(data.labeled.sum()) == 50                               # labels come off the rest


def test_no_val_keeps_hashes_and_bad_fraction_names_the_field():
    cfg = RunConfig()
    d = cfg.semantic_dict()
    assert "val_fraction" not in d["data"]                             # older runs keep their hash
    with_val = cfg.with_overrides({"data.val_fraction": 0.1})
    assert with_val.hash != cfg.hash
    with pytest.raises(ConfigError, match="data.val_fraction"):
        cfg.with_overrides({"data.val_fraction": 0.9})


def test_training_reports_val_acc_every_epoch(tiny_cfg):
    cfg = tiny_cfg.with_overrides({"data.val_fraction": 0.2})
    seen = []
    summary = train(cfg, lambda ev: seen.append(ev.values) if isinstance(ev, Metrics) else None)
    per_epoch = [v for v in seen if "test_acc" in v]
    assert len(per_epoch) == cfg.train.epochs
    assert all(0.0 <= v["val_acc"] <= 1.0 for v in per_epoch)
    assert summary["final_val_acc"] == per_epoch[-1]["val_acc"]
    assert summary["final_val_acc"] > 0.2                              # learned, not chance (10%)
