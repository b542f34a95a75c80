"""The student trained alone on the same labelled data, cached by config, for "what did KD add?"."""
from __future__ import annotations

import json

import torch

from kdengine.core.config import config_hash
from kdengine.data.datasets import DataBundle, data_key
from kdengine.models.families import build_model
from kdengine.core.paths import data_root
from kdengine.teachers.fitting import accuracy, fit_supervised


OPTIMIZER = "adam"          # what fit_supervised uses, whatever the run's own optimiser


def baseline_plan(cfg, data: DataBundle) -> dict:
    """How the student alone is trained: on the labelled transfer samples, for as many steps as
    the distilled student takes (few labels mean few steps per epoch, so the epochs over the
    labelled samples are scaled up; otherwise "student alone" would just be under-trained)."""
    n_lab = int(data.labeled.sum())
    bs = max(1, min(cfg.train.batch_size, n_lab))
    steps_kd = cfg.train.epochs * max(1, len(data.transfer) // cfg.train.batch_size)
    epochs = max(cfg.train.epochs, steps_kd // max(1, n_lab // bs))
    return {"epochs": epochs, "batch_size": bs, "n_labeled": n_lab}


def baseline_key(cfg, plan: dict) -> str:
    """What determines the baseline: data, student, the steps actually taken (epochs over the
    labelled samples and batch size), learning rate, optimiser and seed. Two runs whose user
    epochs differ but give the same steps share one baseline."""
    return config_hash({"data": data_key(cfg.data), "student": cfg.student.__dict__,
                        "epochs": plan["epochs"], "bs": plan["batch_size"], "lr": cfg.train.lr,
                        "optimizer": OPTIMIZER, "seed": cfg.train.seed})


def baseline_accuracy(cfg, data: DataBundle, device, progress=None,
                      should_stop=None) -> tuple[float, bool]:
    """Test accuracy of the student trained with CE on the labelled transfer samples.

    ``progress(frac, message)`` speaks in the run's own epochs ("epoch 5 of 20"), however many
    passes over the labelled samples that takes."""
    plan = baseline_plan(cfg, data)
    path = data_root() / "baselines" / f"{baseline_key(cfg, plan)}.json"
    if path.exists():
        try:
            return float(json.loads(path.read_text())["test_acc"]), True
        except (ValueError, KeyError):
            pass
    lab = data.labeled
    x, y = data.transfer.x[lab], data.transfer.y[lab]
    if len(y) == 0:
        return float("nan"), False
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.student, data.input_shape, data.n_classes)
    user_epochs = cfg.train.epochs

    def in_user_epochs(frac: float, _msg: str) -> None:
        if progress:
            progress(frac, f"epoch {min(user_epochs, int(frac * user_epochs + 1e-9))} of "
                           f"{user_epochs}")
    fit_supervised(model, x, y, plan["epochs"], cfg.train.lr, plan["batch_size"], cfg.train.seed,
                   device, in_user_epochs, should_stop)
    acc = accuracy(model, data.test.x, data.test.y, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test_acc": acc}))
    return acc, False


def teacher_gap_warning(teacher_acc: float | None, student_acc: float | None,
                        margin: float = 0.01) -> str | None:
    """A warning when the teacher does not beat the student trained alone by ``margin``."""
    if teacher_acc is None or student_acc is None:
        return None
    if teacher_acc != teacher_acc or student_acc != student_acc:   # NaN: unknown
        return None
    if teacher_acc - student_acc < margin:
        return (f"The teacher ({teacher_acc:.2%}) is not clearly better than the student alone "
                f"({student_acc:.2%}): distillation has little to transfer; use a bigger or "
                f"longer-trained teacher, or a smaller student.")
    return None
