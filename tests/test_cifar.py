"""The KD benchmarks' CIFAR-size families and the CIFAR-shaped data sets."""
from __future__ import annotations

import pytest
import torch

from kdengine.core.config import DataConfig, ModelConfig, RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.data.datasets import DataUnavailable, load_data
from kdengine.models import build_model, count_params, ladder, model_label

# Parameter counts of the benchmark models for 100 classes (the CRD / DKD papers' tables).
KNOWN = [(("resnetx4", 8, 32), "resnet8x4", 1.23e6), (("resnetx4", 32, 32), "resnet32x4", 7.43e6),
         (("wrn", 40, 2), "wrn_40_2", 2.25e6), (("wrn", 16, 2), "wrn_16_2", 0.70e6),
         (("mobilenetv2", 6, 50), "MobileNetV2 t6 x0.5", 0.81e6)]


@pytest.mark.parametrize("spec,label,params", KNOWN)
def test_benchmark_models_have_the_published_sizes(spec, label, params):
    cfg = ModelConfig(*spec)
    m = build_model(cfg, (3, 32, 32), 100)
    assert model_label(cfg) == label
    assert count_params(m) == pytest.approx(params, rel=0.03)
    m.eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("arch,depth,width", [("resnetx4", 8, 8), ("wrn", 10, 1),
                                               ("mobilenetv2", 2, 25)])
def test_cifar_families_run_on_small_images_and_keep_a_features_trunk(arch, depth, width):
    m = build_model(ModelConfig(arch, depth, width), (1, 8, 8), 10)
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert isinstance(m.features, torch.nn.Module)      # FitNets' default hint layer


def test_ladders_of_the_cifar_families_grow():
    for arch in ("resnetx4", "wrn"):
        sizes = [count_params(build_model(c, (3, 32, 32), 10)) for c in ladder(arch)]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def _cfg(**student) -> dict:
    return {"data": {"name": "cifar10_synthetic", "n_samples": 200},
            "teacher": {"model": {"arch": "resnetx4", "depth": 8, "width": 8}, "epochs": 1},
            "student": {"arch": "wrn", "depth": 16, "width": 2, **student}}


@pytest.mark.parametrize("knob,value,allowed", [("depth", 12, "10, 16, 22, 28, 40"),
                                                 ("width", 3, "1, 2, 4, 8, 10")])
def test_config_refuses_a_depth_or_width_the_family_does_not_have(knob, value, allowed):
    RunConfig.from_dict(_cfg())                        # the valid base
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(_cfg(**{knob: value}))
    assert e.value.field == f"student.{knob}" and allowed in str(e.value) and str(value) in str(e.value)


def test_cifar_families_need_image_data():
    d = _cfg()
    d["data"] = {"name": "moons"}
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    assert e.value.field == "teacher.model.arch"


@pytest.mark.parametrize("name,k", [("cifar10_synthetic", 10), ("cifar100_synthetic", 100)])
def test_synthetic_cifar_is_cifar_shaped_seeded_and_says_it_is_synthetic(name, k):
    a = load_data(DataConfig(name=name, n_samples=300))
    b = load_data(DataConfig(name=name, n_samples=300, noise=0.2000001))   # another cache entry
    c = load_data(DataConfig(name=name, n_samples=300, seed=1))
    assert a.input_shape == (3, 32, 32) and a.n_classes == k and len(a.transfer) == 300
    assert len(a.test) >= k and a.transfer.x.dtype == torch.float32
    assert torch.allclose(a.transfer.x, b.transfer.x, atol=1e-3)
    assert not torch.allclose(a.transfer.x, c.transfer.x, atol=1e-3)
    assert set(a.transfer.y.tolist()) == set(range(k))
    assert all("synthetic" in n for n in a.class_names)
    assert any("timing only" in n for n in a.notes)


def test_cifar100_absent_offline_fails_with_one_clear_line(runs_dir):
    with pytest.raises(DataUnavailable) as e:
        load_data(DataConfig(name="cifar100", download=False))
    assert "\n" not in str(e.value) and "CIFAR100" in str(e.value)


def test_the_memory_estimate_knows_the_cifar_shapes_and_the_knob_that_sizes_synthetic_data():
    from kdengine.run.resources import data_shape, estimate_parts, model_footprint
    cfg = RunConfig.from_dict({**_cfg(), "data": {"name": "cifar100_synthetic", "n_samples": 1000}})
    assert data_shape(cfg) == ((3, 32, 32), 100, 1200)
    assert "data.n_samples" in estimate_parts(cfg)
    assert data_shape(cfg.with_overrides({"data.name": "cifar100"}))[:2] == ((3, 32, 32), 100)
    shape, k, _ = data_shape(cfg)
    params, _, _ = model_footprint(cfg.student, shape, k, batch=4)    # built on the meta device
    assert params == count_params(build_model(cfg.student, shape, k))
