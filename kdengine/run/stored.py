"""A stored run's models: its student from the checkpoint the trainer writes each epoch and its
teacher from the teacher cache, on the CPU, for the analysis pages."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdengine.core.checkpoints import CheckpointError, load_state_into, read_run_checkpoint
from kdengine.core.config import RunConfig
from kdengine.core.paths import data_root
from kdengine.data import DataBundle, load_data
from kdengine.methods import get_method_class
from kdengine.models import build_model, model_label
from kdengine.teachers.keys import teacher_key
from kdengine.teachers.sources import get_teacher


class TeacherNotCached(RuntimeError):
    """The run's teacher is not in the teacher cache (it was deleted); it can be retrained."""


@dataclass
class RunModels:
    """A run's student (from its latest checkpoint) and teacher, with their test-set logits."""
    run_id: str
    cfg: RunConfig
    data: DataBundle
    student: nn.Module
    teacher: nn.Module | None
    teacher_label: str
    student_label: str
    epoch: int                  # epochs the checkpointed student had finished
    s_test: Tensor              # student logits on the test split, (N, C)
    t_test: Tensor | None       # teacher logits on the test split, or None without a teacher


def checkpoint_state(store, run_id: str) -> dict | None:
    """Path and modification time of a run's latest checkpoint (None if there is none yet).

    A live run rewrites the file each epoch, so the mtime tells a page when to reload."""
    path = store.checkpoint_path(run_id)
    if not path.exists():
        return None
    return {"path": path, "mtime": path.stat().st_mtime}


def teacher_is_cached(cfg: RunConfig) -> bool:
    """True when getting this run's teacher needs no training (cached, shipped, file, run, none)."""
    if cfg.teacher.source != "train":
        return True
    return (data_root() / "teachers" / f"{teacher_key(cfg)}.pt").exists()


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    model.eval()
    return torch.cat([model(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])


def load_run_models(store, run_id: str, train_teacher: bool = False) -> RunModels:
    """Load a run's student (latest checkpoint, ``weights_only=True``) and teacher on the CPU.

    Raises CheckpointError when the run has no checkpoint yet, and TeacherNotCached when the teacher
    would have to be trained first and ``train_teacher`` is False."""
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no stored run {run_id}")
    cfg = RunConfig.from_dict(row["config"])
    ck_path = store.checkpoint_path(run_id)
    if not ck_path.exists():
        raise CheckpointError(f"run {run_id} has no checkpoint yet: the trainer writes one at the end "
                              f"of each epoch")
    ck = read_run_checkpoint(ck_path)
    data = load_data(cfg.data)
    student = build_model(cfg.student, data.input_shape, data.n_classes)
    load_state_into(student, ck.state_dict, f"the student of run {run_id}")
    student.eval().requires_grad_(False)
    teacher, t_label = None, ""
    needs = get_method_class(cfg.method.name).needs_teacher
    cached = teacher_is_cached(cfg)
    # A run without a teacher (e.g. "student alone") still shows one when its config names a cached
    # teacher: comparing with it is the point of the page. Only a KD run may ask to retrain one.
    if cfg.teacher.source != "none" and (cached or needs):
        if not cached and not train_teacher:
            raise TeacherNotCached(f"the teacher of run {run_id} is no longer in the teacher cache; "
                                   f"training it again takes {cfg.teacher.epochs} epochs")
        teacher, info = get_teacher(cfg, data, torch.device("cpu"))
        t_label = info["label"]
    s_test = _logits(student, data.test.x)
    t_test = _logits(teacher, data.test.x) if teacher is not None else None
    return RunModels(run_id=run_id, cfg=cfg, data=data, student=student, teacher=teacher,
                     teacher_label=t_label, student_label=model_label(cfg.student),
                     epoch=ck.epoch, s_test=s_test, t_test=t_test)
