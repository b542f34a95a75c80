"""The hierarchy data set: deterministic from its seed, shaped like a small image set, and its
teacher's mistakes fall inside superclasses (the dark knowledge it exists to carry)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdengine.core.config import DataConfig, RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.data import load_data
from kdengine.data.hierarchy import class_names, superclass_of


def _cfg(**kw) -> DataConfig:
    base = dict(name="hierarchy", n_samples=3000, noise=1.0, hier_classes=40, hier_superclasses=8)
    return DataConfig(**{**base, **kw})


def test_shapes_names_and_balance():
    d = load_data(_cfg())
    assert d.kind == "image" and d.input_shape == (1, 8, 8) and d.n_classes == 40
    assert len(d.teacher_train) + len(d.test) == 3000
    assert d.class_names[0] == "s00/c0" and d.class_names[5] == "s01/c0"
    counts = torch.bincount(torch.cat([d.teacher_train.y, d.test.y]), minlength=40)
    assert counts.min() == counts.max() == 75


def test_same_seed_same_data_other_seed_other_data():
    a, b = load_data(_cfg(seed=3)), load_data(_cfg(seed=3, test_fraction=0.25))
    assert torch.equal(a.teacher_train.x, b.teacher_train.x)
    from kdengine.data.datasets import _build   # bypass the cache: really generated twice
    c = _build(_cfg(seed=3))
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)
    assert not torch.equal(a.test.x, load_data(_cfg(seed=4)).test.x)


def test_superclass_map_is_even():
    sup = superclass_of(100, 20)
    assert np.bincount(sup).tolist() == [5] * 20
    assert class_names(100, 20)[99] == "s19/c4"


def test_config_accepts_mlp_and_cnn_and_refuses_more_superclasses_than_classes():
    for arch in ("mlp", "cnn"):
        RunConfig.from_dict({"data": {"name": "hierarchy"}, "student": {"arch": arch}})
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"data": {"name": "hierarchy", "hier_classes": 10,
                                      "hier_superclasses": 20}})
    assert e.value.field == "data.hier_superclasses"


def test_a_trained_teachers_confusions_stay_inside_superclasses():
    torch.manual_seed(0)
    d = load_data(_cfg())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 40))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = d.teacher_train.x, d.teacher_train.y
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        pred = model(d.test.x).argmax(-1)
    sup = torch.from_numpy(superclass_of(40, 8))
    wrong = pred != d.test.y
    assert 0.3 < (~wrong).float().mean() < 0.99          # learnt, with mistakes left to study
    same_super = (sup[pred[wrong]] == sup[d.test.y[wrong]]).float().mean().item()
    # by chance 4 of the 39 wrong classes (10%) share the superclass
    assert same_super > 0.5, same_super
