"""The method contract and the typed config: declared weights applied by the trainer, label terms
zeroed without labels, the linter and helpers reading declarations (not knob names), validation
once, the CLI method switch for every method that fits digits, and a new method added by copying
one file."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdengine.core.events import Metrics, Notice
from kdengine import RunConfig, Store, get_method_class, method_names, temperature_of
from kdengine.cli import main as cli_main
from kdengine.core.knobs import ConfigError, param, temperature_knob, weight_knob
from kdengine.core.registry import _REGISTRY
from kdengine.methods import Batch, Method, TrainContext
from kdengine.teaching.pitfalls import lint

ROOT = Path(__file__).resolve().parent.parent


# ---- a method whose knobs follow none of the usual names -----------------------------------------
@dataclasses.dataclass
class _OddParams:
    tau: float = temperature_knob(2.0)
    match_w: float = weight_knob(0.5)
    label_w: float = weight_knob(0.25)
    t_squared: bool = param(False)


class _Odd(Method):
    """Hinton KD under other names: the declarations alone tell the engine what is what."""
    name = "_odd"
    Params = _OddParams
    weight_knobs = {"match": "match_w", "labels": "label_w"}
    label_terms = ("labels",)
    temperature = "tau"

    def loss_terms(self, batch, step):
        s = self.student(batch.x)
        t = self.teacher_logits(batch)
        terms = {"match": torch.nn.functional.mse_loss(s, t)}
        if self.wants("labels"):
            terms["labels"] = self.hard_ce(s, batch)
        return terms


@pytest.fixture
def odd():
    _REGISTRY["_odd"] = _Odd
    yield
    _REGISTRY.pop("_odd", None)


def _digits(method, params=None, log_every=5, **data):
    return RunConfig.from_dict({
        "data": {"name": "digits", **data},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 64}, "epochs": 3},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": method, "params": params or {}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "log_every": log_every}})


def _ctx():
    return TrainContext(steps_per_epoch=1, epochs=1, n_classes=3, input_shape=(4,),
                        device=torch.device("cpu"))


def _batch():
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(8, 4, generator=g), torch.arange(8) % 3, torch.ones(8, dtype=torch.bool),
                 torch.arange(8), [torch.randn(8, 3, generator=g)])


# ---- the weight vocabulary ---------------------------------------------------------------------------
def test_declarations_name_real_knobs_for_every_method():
    for name in method_names():
        cls = get_method_class(name)
        knobs = {f.name for f in dataclasses.fields(cls.Params)}
        assert set(cls.weight_knobs.values()) <= knobs, name
        assert cls.temperature is None or cls.temperature in knobs, name
        assert cls.label_terms, name


def test_weigh_applies_the_declared_knobs_and_leaves_undeclared_terms_at_one(odd):
    m = _Odd(torch.nn.Linear(4, 3), [torch.nn.Linear(4, 3)], _OddParams(match_w=0.5, label_w=0.25),
             _ctx())
    raw = m.loss_terms(_batch(), 0)
    raw["extra"] = torch.tensor(3.0)
    got = m.weigh(raw)
    assert torch.equal(got["match"], 0.5 * raw["match"])
    assert torch.equal(got["labels"], 0.25 * raw["labels"])
    assert got["extra"] is raw["extra"]
    # no labels: the label term's weight goes to 0, the method stops computing it
    assert m.zero_label_terms() == ["label_w"]
    assert set(m.loss_terms(_batch(), 0)) == {"match"}
    assert m.zero_label_terms() == []     # already 0: nothing left to report


def test_helpers_read_declarations_not_names(odd):
    cfg = _digits("_odd", {"tau": 3.0})
    assert isinstance(cfg.method.params, _OddParams)
    assert temperature_of(cfg) == 3.0 and temperature_of(cfg.to_dict()) == 3.0
    assert temperature_of(_digits("logit_mse")) is None
    assert _Odd.temperature_of(_OddParams(tau=2.5)) == 2.5 and _Odd.temperature_of({"tau": 5}) == 5.0
    assert get_method_class("logit_mse").temperature_of({}) is None
    assert _Odd.label_weight_knobs() == ("label_w",) and _Odd.soft_weight_knobs() == ("match_w",)
    assert get_method_class("dkd").label_weight_knobs() == ("ce_weight",)
    assert get_method_class("dkd").soft_weight_knobs() == ("alpha", "beta")
    # the linter: T^2 off with both a soft and a label term on; an unlabelled transfer set
    warnings = " ".join(lint(cfg))
    assert "T² scaling is off" in warnings and f"{1 / 9:.3g}" in warnings
    assert "unlabelled" in " ".join(lint(_digits("_odd", transfer="unlabeled")))
    assert "unlabelled" not in " ".join(lint(_digits("_odd", {"label_w": 0.0}, transfer="unlabeled")))
    assert "unlabelled" in " ".join(lint(_digits("dkd", transfer="unlabeled")))


def test_trainer_zeroes_the_declared_label_knob_without_labels():
    from kdengine.run.trainer import Trainer
    events = []
    Trainer(_digits("dkd", transfer="unlabeled"), emit=events.append).run()
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("hard (CE) weight forced to 0" in n for n in notices), notices   # by its label
    terms = {k for e in events if isinstance(e, Metrics) for k in e.values if k.startswith("loss/")}
    assert terms == {"loss/tckd", "loss/nckd", "loss/total"}


def test_recorded_terms_are_the_weighted_ones():
    """The charts show what the optimiser sees: doubling a term's weight doubles its curve."""
    from kdengine.run.trainer import Trainer

    def first_kd(soft):
        events = []
        Trainer(_digits("hinton", {"soft_weight": soft}, log_every=1), emit=events.append).run()
        return next(e.values["loss/kd"] for e in events
                    if isinstance(e, Metrics) and "loss/kd" in e.values)
    # log_every 1: the first point is step 0's loss, taken before the first optimiser step, so the
    # two runs see the same student and batch
    assert math.isclose(first_kd(0.8), 2 * first_kd(0.4), rel_tol=1e-6)


# ---- the config, typed and validated once ------------------------------------------------------------
def test_params_are_typed_and_plain_data_round_trips_unchanged():
    cfg = _digits("hinton", {"T": "8"})
    assert type(cfg.method.params).__name__ == "HintonParams" and cfg.method.params.T == 8.0
    d = cfg.to_dict()
    assert d["method"]["params"] == {"T": 8.0, "soft_weight": 0.9, "hard_weight": 0.1,
                                     "t_squared": True}
    assert RunConfig.from_dict(d).to_dict() == d
    assert RunConfig.from_yaml(cfg.to_yaml()).hash == cfg.hash == RunConfig.hash_of(d)


def test_validated_trusts_an_unchanged_config_and_rechecks_an_edited_one(monkeypatch):
    cfg = _digits("hinton")
    calls = []
    real = RunConfig.validate
    monkeypatch.setattr(RunConfig, "validate", lambda self: calls.append(1) or real(self))
    assert cfg.validated() is cfg and not calls
    assert cfg.copy().validated() is not None and not calls
    cfg.method.name, cfg.method.params = "logit_mse", {"mse_weight": 2}
    cfg.validated()
    assert calls and cfg.method.params.mse_weight == 2.0
    cfg.train.epochs = 0
    with pytest.raises(ConfigError, match="train.epochs"):
        cfg.validated()


def test_a_new_method_name_starts_from_its_own_knobs():
    base = _digits("hinton", {"T": 8.0})
    cfg = base.with_overrides({"method.params.beta": 2, "method.name": "dkd"})
    assert cfg.method.params == get_method_class("dkd").Params(beta=2.0)
    # the same name keeps the knobs set so far
    assert base.with_overrides({"method.name": "hinton"}).method.params.T == 8.0
    with pytest.raises(ConfigError, match="method.params.nope"):
        base.with_overrides({"method.name": "dkd", "method.params.nope": 1})


# ---- the CLI method switch, for every method that fits digits ----------------------------------------
DIGITS_METHODS = [n for n in method_names()
                  if not n.startswith("_") and not get_method_class(n).requires_arch]
# Small knobs so setup (extra teachers, specialists, attacks) stays quick.
TINY = {"multi_teacher": ["method.params.teachers=mlp-1-64"],
        "specialists": ["method.params.specialist_epochs=1", "method.params.combine_steps=5"],
        "bss": ["method.params.attack_size=8", "method.params.attack_steps=2",
                "method.params.probe_size=16"],
        "sobolev": ["method.params.k=1"]}


def test_every_method_but_the_transformer_ones_fits_digits():
    assert len(DIGITS_METHODS) >= 12 and {"hinton", "dkd", "ce", "fitnet"} <= set(DIGITS_METHODS)


@pytest.mark.parametrize("name", DIGITS_METHODS)
def test_cli_switches_method_from_a_preset(name, capsys):
    sets = [f"method.name={name}", "train.epochs=1", "teacher.epochs=3", "train.boundary_metrics=off",
            *TINY.get(name, [])]
    rc = cli_main(["train", "--config", "digits-quick", *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rid = re.search(r"^run (\S+):", out.out, re.M).group(1)
    store = Store()
    row = store.get_run(rid)
    assert row["status"] == "done" and row["config"]["method"]["name"] == name
    assert row["config"]["method"]["params"] == \
        dataclasses.asdict(RunConfig.from_dict(row["config"]).method.params)
    terms = {k for k in store.series(rid) if k.startswith("loss/")} - {"loss/total"}
    assert terms, f"{name}: no loss terms recorded"
    # the label term is recorded exactly when its declared weight is above 0 by default
    cls = get_method_class(name)
    defaults = cls.Params()
    wants_ce = all(getattr(defaults, k) > 0 for k in cls.label_weight_knobs())
    assert ("loss/ce" in terms) == wants_ce, (name, terms)


# ---- adding a method is adding a file ------------------------------------------------------------------
def test_a_copied_method_file_is_listed_trained_and_recorded(tmp_path):
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "kdengine", tree / "kdengine", ignore=ignore)
    shutil.copytree(ROOT / "assets", tree / "assets", ignore=ignore)
    src = (ROOT / "kdengine" / "methods" / "hinton.py").read_text()
    new = src.replace('name = "hinton"', 'name = "hinton_twin"').replace("HintonKD", "HintonTwin")
    assert new.count("hinton_twin") == 1 and "HintonTwin" in new
    (tree / "kdengine" / "methods" / "hinton_twin.py").write_text(new)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(tree), "KD_RUNS_DIR": str(runs)}

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "kdengine", *args], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stdout

    listed = cli("methods")
    assert re.search(r"^hinton_twin\s", listed, re.M) and re.search(r"^hinton\s", listed, re.M)
    out = cli("train", "--config", "digits-quick", "--set", "method.name=hinton_twin",
              "--set", "train.epochs=1", "--set", "teacher.epochs=2")
    rid = re.search(r"^run (\S+):", out, re.M).group(1)
    store = Store(runs)
    try:
        row = store.get_run(rid)
        assert row["status"] == "done" and row["method"] == "hinton_twin"
        series = store.series(rid)
        assert {"loss/kd", "loss/ce"} <= set(series)
        assert all(math.isfinite(v) for _, _, v in series["loss/kd"])
    finally:
        store.close()
