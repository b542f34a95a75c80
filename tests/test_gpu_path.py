"""The GPU path exercised on the CPU: bf16 autocast, channels_last, torch.compile, cached teacher
logits. The same trainer code runs on CUDA; only the device differs."""
from __future__ import annotations

import shutil

import pytest
import torch

from kdengine.core.events import Metrics
from kdengine.core.config import RunConfig
from kdengine.core.knobs import ConfigError
from kdengine.methods import hinton
from kdengine.run.trainer import Trainer, memory_format


def _cfg(**train) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "cifar10_synthetic", "n_samples": 128},
        "teacher": {"model": {"arch": "resnetx4", "depth": 8, "width": 8}, "epochs": 1},
        "student": {"arch": "resnetx4", "depth": 8, "width": 8},
        "method": {"name": "hinton"},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "checkpoint_every": 0,
                  "log_every": 2, **train}})


def _spy_logit_dtypes(monkeypatch) -> list:
    """The dtypes of the student logits Hinton KD's loss sees."""
    seen = []

    def spying(real):
        def spy(s, *a, **k):
            seen.append(s.dtype)
            return real(s, *a, **k)
        return spy
    monkeypatch.setattr(hinton, "kd_loss", spying(hinton.kd_loss))
    return seen


def test_amp_on_the_cpu_runs_the_student_in_bf16_and_keeps_float32_weights(monkeypatch):
    seen = _spy_logit_dtypes(monkeypatch)
    tr = Trainer(_cfg(amp=True, channels_last="on"))
    summary = tr.run()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in tr.student.parameters())
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    conv = tr.student.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dim() == 4
    seen.clear()
    Trainer(_cfg(amp=False)).run()
    assert set(seen) == {torch.float32}


def test_auto_device_on_a_cpu_machine_leaves_amp_off(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    seen = _spy_logit_dtypes(monkeypatch)
    Trainer(_cfg(amp=True, device="auto")).run()
    assert set(seen) == {torch.float32}


def test_the_teacher_trains_under_the_runs_bf16_autocast_and_is_cached_apart(monkeypatch, runs_dir):
    from kdengine.data import load_data
    from kdengine.teachers import sources
    from kdengine.teachers.keys import teacher_key
    seen = []
    real = sources.fit_supervised

    def spy(model, *a, **k):
        # the training steps' outputs (the accuracy measured afterwards runs in float32)
        model.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
        return real(model, *a, **k)
    monkeypatch.setattr(sources, "fit_supervised", spy)
    cfg = _cfg(amp=True)
    teacher, _ = sources.get_teacher(cfg, load_data(cfg.data), torch.device("cpu"))
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert teacher_key(cfg) != teacher_key(_cfg(amp=False))
    if not torch.cuda.is_available():   # auto on a CPU machine: no AMP, the float32 teacher's key
        assert teacher_key(_cfg(amp=True, device="auto")) == teacher_key(_cfg(amp=False))


def test_channels_last_is_for_conv_students_on_cuda_or_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format("auto", "resnetx4", (3, 32, 32), cuda) is torch.channels_last
    assert memory_format("auto", "resnetx4", (3, 32, 32), cpu) is torch.contiguous_format
    assert memory_format("on", "wrn", (3, 32, 32), cpu) is torch.channels_last
    assert memory_format("off", "wrn", (3, 32, 32), cuda) is torch.contiguous_format
    assert memory_format("on", "mlp", (3, 32, 32), cuda) is torch.contiguous_format
    with pytest.raises(ConfigError) as e:
        _cfg(channels_last="maybe")
    assert e.value.field == "train.channels_last"


def _loss_curve(cfg, term: str = "loss/kd") -> list[float]:
    out = []
    Trainer(cfg, emit=lambda e: out.append(e.values[term])
            if isinstance(e, Metrics) and term in e.values else None).run()
    return out


@pytest.mark.parametrize("method,transfer", [("hinton", "train"), ("dkd", "train"), ("dkd", "labels")])
def test_cached_teacher_logits_train_as_the_teacher_run_every_step(monkeypatch, method, transfer):
    """The teacher's logits computed once per run against the teacher run live each step: the same
    loss curve; with a partly labelled set ("labels") DKD's target is the teacher's argmax on the
    unlabelled samples both ways."""
    from kdengine.methods import dkd
    cls, term = {"hinton": (hinton.HintonKD, "loss/kd"), "dkd": (dkd.DKD, "loss/nckd")}[method]
    params = {"T": 3.0} if method == "hinton" else {"T": 3.0, "warmup_epochs": 0.0}
    cfg = RunConfig.from_dict({"data": {"name": "digits", "transfer": transfer},
                               "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 32},
                                           "epochs": 2},
                               "student": {"arch": "mlp", "depth": 1, "width": 16},
                               "method": {"name": method, "params": params},
                               "train": {"epochs": 1, "log_every": 5, "device": "cpu",
                                         "checkpoint_every": 0}})
    cached = _loss_curve(cfg, term)
    monkeypatch.setattr(cls, "cache_teacher_logits", False)
    live = _loss_curve(cfg, term)
    assert len(cached) == len(live) > 2
    # the cached logits come from whole-set forwards, the live ones from a batch's: float32 round-off
    # may differ in the last bits, and Adam carries that along the run's steps
    assert cached == pytest.approx(live, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("method,params,term", [("hinton", {"T": 3.0}, "loss/kd"),
                                               ("dkd", {"warmup_epochs": 0.0}, "loss/tckd")])
def test_slicing_an_epoch_ordered_copy_trains_as_indexing_each_step(monkeypatch, method, params,
                                                                    term):
    """A small set put in each epoch's order and sliced per step (the cached teacher logits too)
    gives the batches of indexing the whole set per step: the same run, bit for bit."""
    from kdengine.run import trainer
    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_samples": 300},
                               "teacher": {"model": {"arch": "mlp", "depth": 1, "width": 16},
                                           "epochs": 2},
                               "student": {"arch": "mlp", "depth": 1, "width": 8},
                               "method": {"name": method, "params": params},
                               "train": {"epochs": 2, "batch_size": 32, "log_every": 2,
                                         "device": "cpu", "checkpoint_every": 0}})
    runs = []
    for copy_bytes in (trainer.EPOCH_COPY_BYTES, 0):        # 0: every set is indexed per step
        monkeypatch.setattr(trainer, "EPOCH_COPY_BYTES", copy_bytes)
        curve = []
        tr = Trainer(cfg, emit=lambda e: curve.append(  # losses and accuracies, not the clocks
            {k: v for k, v in e.values.items() if k.startswith(("loss/", "final", "test", "train"))})
            if isinstance(e, Metrics) else None)
        tr.run()
        runs.append((curve, tr.student.state_dict()))
    (sliced, w_sliced), (indexed, w_indexed) = runs
    assert sliced == indexed and sum(term in v for v in sliced) > 4
    assert all(torch.equal(w_sliced[k], w_indexed[k]) for k in w_sliced)


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs a C compiler")
def test_compile_switch_trains_one_tiny_epoch():
    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_samples": 100},
                               "teacher": {"source": "none"},
                               "student": {"arch": "mlp", "depth": 1, "width": 8},
                               "method": {"name": "ce"},
                               "train": {"epochs": 1, "batch_size": 64, "device": "cpu",
                                         "compile": True, "checkpoint_every": 0}})
    tr = Trainer(cfg)
    summary = tr.run()
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    # compiled in place: the checkpoint keys are the plain module's
    assert all(not k.startswith("_orig_mod") for k in tr.student.state_dict())
