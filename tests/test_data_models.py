"""Data sets, transfer sets and model families."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.config import DataConfig, ModelConfig
from kdengine.data.datasets import DataUnavailable, load_data
from kdengine.models.families import build_model, count_params, ladder


@pytest.mark.parametrize("name", ["moons", "circles", "spirals", "blobs"])
def test_toys_are_2d_and_deterministic(name):
    a = load_data(DataConfig(name=name, n_samples=300))
    b = load_data(DataConfig(name=name, n_samples=300, noise=0.2000001))  # a different cache entry
    assert a.kind == "2d" and a.input_shape == (2,)
    assert torch.allclose(a.test.x, b.test.x, atol=1e-3)
    assert len(a.teacher_train) + len(a.test) == 300 - 300 % (a.n_classes if name == "spirals" else 1)


def test_digits_split_is_stratified_and_normalised():
    d = load_data(DataConfig(name="digits"))
    assert d.input_shape == (1, 8, 8) and d.n_classes == 10
    assert abs(d.teacher_train.x.mean().item()) < 1e-3
    counts = torch.bincount(d.test.y, minlength=10)
    assert counts.min() >= 40


def test_labelled_fraction_keeps_exactly_n_labels_spread_over_classes():
    d = load_data(DataConfig(name="digits", transfer="labels", n_labels=50))
    assert d.n_labeled == 50
    assert torch.bincount(d.transfer.y[d.labeled], minlength=10).tolist() == [5] * 10


def test_unlabeled_and_heldout_transfer_sets():
    u = load_data(DataConfig(name="digits", transfer="unlabeled"))
    assert u.n_labeled == 0 and any("forced to 0" in n for n in u.notes)
    h = load_data(DataConfig(name="digits", transfer="heldout", heldout_fraction=0.3))
    assert len(h.transfer) < len(h.teacher_train)
    # the held-out split is disjoint from the teacher's data
    t = {tuple(r.flatten().tolist()) for r in h.teacher_train.x[:200]}
    assert not any(tuple(r.flatten().tolist()) in t for r in h.transfer.x)


def test_omit_class_removes_it_from_transfer_only():
    d = load_data(DataConfig(name="digits", omit_class=3))
    assert (d.transfer.y == 3).sum() == 0
    assert (d.teacher_train.y == 3).sum() > 0 and (d.test.y == 3).sum() > 0


def test_real_dataset_absent_offline_fails_with_one_clear_line(runs_dir):
    with pytest.raises(DataUnavailable) as e:
        load_data(DataConfig(name="mnist", download=False))
    msg = str(e.value)
    assert "\n" not in msg and "MNIST" in msg and "digits" in msg


@pytest.mark.parametrize("arch,depth,width", [("mlp", 2, 32), ("cnn", 3, 8), ("resnet", 8, 16),
                                               ("resnet", 14, 8), ("resnet18", 1, 1)])
def test_model_families_forward_on_digits(arch, depth, width):
    m = build_model(ModelConfig(arch, depth, width), (1, 8, 8), 10)
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert count_params(m) > 0


def test_ladders_grow():
    for arch in ("mlp", "cnn", "resnet"):
        sizes = [count_params(build_model(c, (1, 8, 8), 10)) for c in ladder(arch)]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
