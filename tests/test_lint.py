"""The pitfall linter: static KL-reduction scan, the one-step runtime probe, T^2, labels, and the
teacher-vs-student-alone warning (also from the trainer once the baseline is known)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from kdengine.core.events import Notice
from kdengine.core.config import RunConfig
from kdengine.teaching.pitfalls import kl_mean_calls, lint, probe_method, teacher_gap_warning
from kdengine.methods import Method
from kdengine.core.registry import _REGISTRY


def _cfg(method="hinton", params=None, **data):
    return RunConfig.from_dict({
        "data": {"name": "digits", **data},
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 2, "width": 64}},
        "student": {"arch": "mlp", "depth": 1, "width": 16},
        "method": {"name": method, "params": params or {}}})


def test_static_scan_finds_kl_with_mean_reduction_only():
    src = '''
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import kl_div
from kdengine.losses.logits import kl_div as kd_kl
a = F.kl_div(x, y, reduction="mean")
b = nn.KLDivLoss()
c = F.kl_div(F.log_softmax(s, -1), p,
             reduction='batchmean')
d = kd_kl(p, q)
e = nn.KLDivLoss(reduction="sum")
f = kl_div(x, y)
'''
    assert kl_mean_calls(src) == [6, 7, 12]
    # kdengine.losses.logits defines its own kl_div: a bare call to it is not PyTorch's
    assert kl_mean_calls("from ..losses import kl_div\nkl_div(p, q)\n") == []
    assert kl_mean_calls("def broken(:\n") == []


@dataclass
class _P:
    T: float = 4.0


class _Careless(Method):
    """Every pitfall at once: mean-reduced KL, teacher in train mode and outside no_grad."""
    name = "_careless"
    Params = _P

    def loss_terms(self, batch, step):
        t_model = self.teachers[0]
        t_model.train()
        t = t_model(batch.x)
        s = self.student(batch.x)
        kl = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="mean")
        return {"kd": kl}


@pytest.fixture
def careless():
    _REGISTRY["_careless"] = _Careless
    yield
    _REGISTRY.pop("_careless", None)


def test_probe_catches_a_careless_method(careless):
    msgs = lint(_cfg("_careless"))
    text = " ".join(msgs)
    assert "reduction='mean'" in text and "line" in text          # static, with the line
    probe = probe_method(_cfg("_careless"))
    assert any("One step of '_careless'" in m for m in probe)      # runtime kl_div record
    assert any("train mode" in m for m in probe)
    assert any("outside torch.no_grad()" in m for m in probe)
    assert any("Gradients reached the teacher" in m for m in probe)


@pytest.mark.parametrize("name", ["hinton", "dkd", "logit_mse", "noisy_teacher", "sobolev",
                                  "fitnet", "dml", "multi_teacher", "adversarial"])
def test_shipped_methods_pass_the_probe(name):
    assert probe_method(_cfg(name)) == []
    assert not any("reduction='mean'" in m for m in lint(_cfg(name)))


def test_probe_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    a = torch.rand(1)
    torch.manual_seed(123)
    probe_method(_cfg("fitnet", {"hint_weight": 2.5}))
    assert torch.equal(torch.rand(1), a)


def test_t_squared_and_unlabeled_checks():
    off = lint(_cfg("hinton", {"t_squared": False, "soft_weight": 0.5, "hard_weight": 0.5}))
    assert any("T² scaling is off" in m for m in off)
    assert not any("T² scaling" in m for m in lint(_cfg("hinton", {"t_squared": False,
                                                                    "hard_weight": 0.0})))
    unl = lint(_cfg("hinton", transfer="unlabeled"))
    assert any("unlabelled" in m for m in unl)
    assert not any("unlabelled" in m for m in lint(_cfg("hinton", {"hard_weight": 0.0},
                                                        transfer="unlabeled")))


def test_dkd_warmup_is_capped_and_a_warmup_eating_the_run_is_flagged():
    from kdengine.methods.dkd import DKDParams, warmup_epochs
    assert warmup_epochs(DKDParams(), 20) == 5.0          # 20 epochs capped at 25% of a 20-epoch run
    assert warmup_epochs(DKDParams(), 240) == 20.0        # the paper's run: its own 20 epochs
    # default cap: the run is at full weight for 75% of it, no warning
    assert not any("warm-up" in m for m in lint(_cfg("dkd")))
    long = lint(_cfg("dkd", {"warmup_cap": 1.0}))         # 20 epochs of warm-up in a 20-epoch run
    assert any("warm-up lasts 20 of 20 epochs" in m for m in long)


def test_teacher_gap_warning():
    assert teacher_gap_warning(0.95, 0.90) is None
    w = teacher_gap_warning(0.905, 0.90)
    assert w and "90.50%" in w and "not clearly better" in w
    assert teacher_gap_warning(0.80, 0.90) is not None
    assert teacher_gap_warning(None, 0.9) is None and teacher_gap_warning(float("nan"), 0.9) is None


def test_trainer_warns_when_the_teacher_does_not_beat_the_student_alone(runs_dir):
    from kdengine.run.trainer import Trainer
    cfg = RunConfig.from_dict({
        "data": {"name": "digits"},
        # a one-epoch 8-unit teacher against a 32-unit student trained for the full run
        "teacher": {"source": "train", "model": {"arch": "mlp", "depth": 1, "width": 8},
                    "epochs": 1},
        "student": {"arch": "mlp", "depth": 1, "width": 32},
        "method": {"name": "hinton"},
        "train": {"epochs": 3, "lr": 0.003, "baseline": True}})
    events = []
    summary = Trainer(cfg, events.append).run()
    notices = [e.message for e in events if isinstance(e, Notice)]
    warned = any("not clearly better than the student alone" in n for n in notices)
    assert warned == (summary["teacher_test_acc"] - summary["baseline_test_acc"] < 0.01)
    assert warned      # the setup above is meant to produce a weak teacher


def test_a_breaking_check_is_logged_and_skipped_and_sources_are_parsed_once(monkeypatch, caplog):
    """The Lab lints on every run of its page: a check that raises must not take the page (and the
    Train press in that run) down, and a method's source is parsed once per version of the file,
    not per page run (CPython 3.11's ast.parse also failed when 30 sessions parsed at once)."""
    import ast as ast_module
    from kdengine import RunConfig
    from kdengine.teaching import pitfalls
    cfg = RunConfig.from_dict({"data": {"name": "digits"}, "method": {"name": "hinton"}})
    pitfalls._kl_mean_lines.cache_clear()
    parses = []
    real_parse = ast_module.parse
    monkeypatch.setattr(pitfalls.ast, "parse", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    first = pitfalls.lint(cfg)
    assert pitfalls.lint(cfg) == first and len(parses) == 1

    def broken(cfg):
        raise SystemError("AST constructor recursion depth mismatch")
    monkeypatch.setattr(pitfalls, "CHECKS", [broken, *pitfalls.CHECKS])
    assert pitfalls.lint(cfg) == first
    assert "lint check broken failed" in caplog.text
