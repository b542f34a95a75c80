"""Config validation: each bad field gives its own clear error; round trips; hashes."""
from __future__ import annotations

import pytest

from kdengine.core.config import RunConfig, flatten
from kdengine.core.knobs import ConfigError

BAD = [
    ("method.params.T", -1, "T must be > 0"),
    ("method.params.T", 0, "T must be > 0"),
    ("method.params.soft_weight", -0.5, ">= 0"),
    ("method.params.hard_weight", "heavy", "must be a number"),
    ("method.params.t_squared", "maybe", "true or false"),
    ("method.params.bogus", 1, "unknown field"),
    ("method.name", "nope", "unknown method"),
    ("train.epochs", 0, ">= 1"),
    ("train.epochs", 2.5, "integer"),
    ("train.batch_size", -4, ">= 1"),
    ("train.lr", 0.0, "> 0"),
    ("train.lr", float("nan"), "finite"),
    ("train.optimizer", "adagrad", "one of"),
    ("train.seed", -1, ">= 0"),
    ("train.device", "tpu", "one of"),
    ("data.name", "imagenet", "one of"),
    ("data.noise", -1.0, ">= 0"),
    ("data.test_fraction", 0.99, "<= 0.8"),
    ("data.transfer", "stolen", "one of"),
    ("data.n_labels", 0, ">= 1"),
    ("student.arch", "vit", "one of"),
    ("student.width", 0, ">= 1"),
    ("student.depth", 200, "<= 110"),
    ("teacher.model.width", -3, ">= 1"),
    ("teacher.epochs", 0, ">= 1"),
    ("teacher.source", "internet", "one of"),
]


@pytest.mark.parametrize("key,value,expect", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_field_names_field_value_and_rule(key, value, expect):
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides({key: value})
    assert err.value.field == key
    assert expect in str(err.value)
    if not isinstance(value, float):          # the value itself is quoted back to the user
        assert str(value) in str(err.value) or "unknown" in str(err.value)


def test_cross_field_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides({"data.name": "moons", "student.arch": "cnn"})
    assert e.value.field == "student.arch"
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides({"student.arch": "resnet", "student.depth": 9})
    assert e.value.field == "student.depth"
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides({"teacher.source": "none"})
    assert e.value.field == "teacher.source"


def test_method_params_get_defaults_and_types():
    cfg = RunConfig().with_overrides({"method.name": "dkd", "method.params": {"beta": "2"}})
    assert cfg.method.params.beta == 2.0
    assert cfg.method.params.alpha == 1.0 and cfg.method.params.T == 4.0


def test_json_and_yaml_round_trip():
    cfg = RunConfig().with_overrides({"method.params.T": 7.5, "data.name": "moons",
                                      "student.arch": "mlp", "teacher.model.arch": "mlp"})
    assert RunConfig.from_json(cfg.to_json()).to_dict() == cfg.to_dict()
    assert RunConfig.from_yaml(cfg.to_yaml()).to_dict() == cfg.to_dict()


def test_hash_ignores_name_and_tracks_values():
    a = RunConfig().validate()
    b = RunConfig(name="other").validate()
    c = RunConfig().with_overrides({"method.params.T": 2})
    assert a.hash == b.hash != c.hash


def test_bad_files_give_config_errors(tmp_path):
    for text in ("{not json", "[1, 2]", "train: {epochs: -1}", "\x00\x01binary"):
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError):
            RunConfig.load(str(p))
    p = tmp_path / "c.bin"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        RunConfig.load(str(p))


def test_flatten_keys_are_settable():
    cfg = RunConfig().validate()
    flat = flatten(cfg.to_dict())
    assert "method.params.T" in flat and "train.epochs" in flat
    again = RunConfig().with_overrides(flat)
    assert again.to_dict() == cfg.to_dict()



@pytest.mark.parametrize("name,stored,now", [
    # configs stored before the paper-faithful defaults load with their values; a new run gets the
    # new defaults (``now``), and knobs added since take theirs
    ("bss", {"attack_step": 1.0, "attack_eps": 0.02, "attack_rule": "authors"},
     {"attack_step": None, "attack_eps": None, "base_samples": "both_correct"}),
    ("fitnet", {"schedule": "joint", "regressor": "linear", "hint_epochs": 2.0},
     {"schedule": "stagewise", "regressor": "conv_bn_relu", "hint_cap": 0.5}),
    ("dml", {"update": "joint", "cohort_size": 3}, {"update": "alternating"}),
    ("specialists", {"top_n": 2, "cluster_size": 3}, {"top_n": 1, "grouping": "covariance"}),
])
def test_a_config_stored_with_the_earlier_defaults_still_loads_with_its_values(name, stored, now):
    params = RunConfig.from_dict({"method": {"name": name, "params": stored}}).to_dict()
    params = params["method"]["params"]
    assert {k: params[k] for k in stored} == stored
    assert all(params[k] == v for k, v in now.items() if k not in stored)
    fresh = RunConfig.from_dict({"method": {"name": name}}).to_dict()["method"]["params"]
    assert {k: fresh[k] for k in now} == now
