"""The student trained alone on the same labelled data, cached by config, for "what did KD add?"."""
from __future__ import annotations

import json

import torch

from kdengine.core.config import config_hash
from kdengine.data.datasets import DataBundle, data_key
from kdengine.models.families import build_model
from kdengine.core.paths import data_root
from kdengine.teachers.fitting import accuracy, fit_supervised


def baseline_key(cfg) -> str:
    return config_hash({"data": data_key(cfg.data), "student": cfg.student.__dict__,
                        "epochs": cfg.train.epochs, "lr": cfg.train.lr, "bs": cfg.train.batch_size,
                        "seed": cfg.train.seed})


def baseline_accuracy(cfg, data: DataBundle, device, progress=None) -> tuple[float, bool]:
    """Test accuracy of the student trained with CE on the labelled transfer samples."""
    path = data_root() / "baselines" / f"{baseline_key(cfg)}.json"
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
    # Few labels means few steps per epoch: scale epochs so the baseline sees as many steps as the
    # KD student does, otherwise "student alone" is just under-trained.
    steps_kd = cfg.train.epochs * max(1, len(data.transfer) // cfg.train.batch_size)
    bs = min(cfg.train.batch_size, len(y))
    epochs = max(cfg.train.epochs, steps_kd // max(1, len(y) // bs))
    fit_supervised(model, x, y, epochs, cfg.train.lr, bs, cfg.train.seed, device, progress)
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
