"""Cache keys: what determines a trained teacher, so an identical one is reused, never retrained."""
from __future__ import annotations

from kdengine.core.config import RunConfig, config_hash
from kdengine.data import teacher_data_key
from kdengine.teachers.fitting import amp_on


def teacher_key(cfg: RunConfig) -> str:
    t = cfg.teacher
    # a teacher trained under bf16 autocast is another teacher; float32 keys stay as they were
    amp = {"amp": "bf16"} if amp_on(cfg.train) else {}
    return config_hash({"data": teacher_data_key(cfg.data), "model": t.model.__dict__,
                        "epochs": t.epochs, "lr": t.lr, "batch": cfg.train.batch_size, **amp})
