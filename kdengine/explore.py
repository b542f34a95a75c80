"""Soft-target explorer: the numbers behind the "Soft targets" page, with no UI code.

Given a stored (finished or live) run, load its student from the checkpoint the trainer writes each
epoch and its teacher from the teacher cache, then look at one sample: the softmax at temperature T
(Hinton, Vinyals & Dean 2015), entropy against T, the wrong classes ranked by the teacher ("dark
knowledge"), and DKD's split of the KD loss (Zhao et al., CVPR 2022) with the identity
``KL = TCKD + (1 - p_t) * NCKD`` filled in.

All quantities here are per sample and *without* the T^2 factor the training loss carries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import RunConfig
from .data import DataBundle, load_data
from .losses import dkd_per_sample, entropy, kl_div, soften
from .models import build_model, model_label
from .paths import data_root
from .teachers import CheckpointError, get_teacher, load_state_into, safe_load, teacher_key

T_MIN, T_MAX = 0.5, 20.0


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
    ck = safe_load(ck_path)
    data = load_data(cfg.data)
    student = build_model(cfg.student, data.input_shape, data.n_classes)
    load_state_into(student, ck["state_dict"], f"the student of run {run_id}")
    student.eval().requires_grad_(False)
    teacher, t_label = None, ""
    from .methods import get_method_class
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
                     epoch=int(ck.get("epoch", 0)), s_test=s_test, t_test=t_test)


# -- one sample --------------------------------------------------------------------------------
def softmax_T(logits: Tensor | np.ndarray, T: float) -> np.ndarray:
    """q_i = exp(z_i / T) / sum_j exp(z_j / T) for one logit vector (or a batch)."""
    return soften(torch.as_tensor(logits, dtype=torch.float64), float(T)).numpy()


def temperature_grid(n: int = 80) -> np.ndarray:
    """T values for the entropy curve: log-spaced over the slider's range [0.5, 20]."""
    return np.geomspace(T_MIN, T_MAX, n)


def entropy_curve(logits: Tensor | np.ndarray, Ts: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(z / T) for each T in ``Ts``; rises from ~0 to log(classes)."""
    z = torch.as_tensor(logits, dtype=torch.float64).reshape(1, -1)
    Tt = torch.as_tensor(np.asarray(Ts), dtype=torch.float64).reshape(-1, 1)
    return entropy(torch.softmax(z / Tt, dim=-1)).numpy()


def wrong_classes_ranked(p_teacher: np.ndarray | None, p_student: np.ndarray, target: int,
                         class_names: list[str]) -> list[dict[str, Any]]:
    """Non-target classes, most probable first under the teacher (under the student without one).

    Each row: class index, name, teacher and student probability, and the share of the teacher's
    non-target mass (the renormalised distribution NCKD compares)."""
    ref = p_teacher if p_teacher is not None else p_student
    rest = [c for c in range(len(ref)) if c != target]
    mass_t = float(sum(ref[c] for c in rest)) or 1.0
    rows = []
    for c in sorted(rest, key=lambda c: -ref[c]):
        rows.append({"class": c, "name": class_names[c] if c < len(class_names) else str(c),
                     "teacher": None if p_teacher is None else float(p_teacher[c]),
                     "student": float(p_student[c]),
                     "share_of_wrong_mass": float(ref[c]) / mass_t})
    return rows


def dkd_identity(student_logits: Tensor | np.ndarray, teacher_logits: Tensor | np.ndarray,
                 target: int, T: float) -> dict[str, float]:
    """DKD's decomposition of one sample's KD term (no T^2): KL = TCKD + (1 - p_t) * NCKD.

    Returns tckd, nckd, p_t (teacher's target probability at T), weight = 1 - p_t, kl (computed
    directly), rhs = tckd + weight * nckd, and their difference."""
    s = torch.as_tensor(student_logits, dtype=torch.float64).reshape(1, -1)
    t = torch.as_tensor(teacher_logits, dtype=torch.float64).reshape(1, -1)
    y = torch.tensor([int(target)])
    per = dkd_per_sample(s, t, y, float(T))
    kl = kl_div(torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1))
    tckd, nckd, p_t = (float(per[k][0]) for k in ("tckd", "nckd", "p_t"))
    rhs = tckd + (1.0 - p_t) * nckd
    return {"tckd": tckd, "nckd": nckd, "p_t": p_t, "weight": 1.0 - p_t, "kl": float(kl[0]),
            "rhs": rhs, "gap": float(kl[0]) - rhs, "T": float(T)}


def sample_view(models: RunModels, index: int, T: float) -> dict[str, Any]:
    """Everything the page shows for test sample ``index`` at temperature T."""
    n = len(models.data.test)
    if not 0 <= index < n:
        raise IndexError(f"sample index must be in 0..{n - 1}, got {index}")
    y = int(models.data.test.y[index])
    zs = models.s_test[index]
    zt = models.t_test[index] if models.t_test is not None else None
    ps = softmax_T(zs, T)
    pt = softmax_T(zt, T) if zt is not None else None
    Ts = temperature_grid()
    out = {"index": index, "target": y, "T": float(T), "p_student": ps, "p_teacher": pt,
           "pred_student": int(zs.argmax()), "pred_teacher": None if zt is None else int(zt.argmax()),
           "Ts": Ts, "H_student": entropy_curve(zs, Ts),
           "H_teacher": None if zt is None else entropy_curve(zt, Ts),
           "H_max": float(np.log(len(ps))),
           "wrong": wrong_classes_ranked(pt, ps, y, models.data.class_names),
           "dkd": None if zt is None else dkd_identity(zs, zt, y, T)}
    return out


def sample_image(data: DataBundle, index: int) -> np.ndarray:
    """Test image ``index`` in display range [0, 1]: (H, W) for one channel, (H, W, 3) for colour."""
    x = data.denormalise(data.test.x[index]).numpy()
    x = np.clip(x, 0.0, 1.0)
    return x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))


def upscale(img: np.ndarray, size: int = 64) -> np.ndarray:
    """Nearest-neighbour upscale so an 8x8 digit stays crisp in the browser."""
    k = max(1, size // img.shape[0])
    reps = (k, k) + (1,) * (img.ndim - 2)
    return np.kron(img, np.ones(reps))


SAMPLE_FILTERS = ("all", "student wrong", "student and teacher disagree", "teacher unsure")


def sample_indices(models: RunModels, which: str = "all", limit: int = 48) -> list[int]:
    """Test indices to offer in the picker; the interesting ones first for the filtered views."""
    y = models.data.test.y
    ps = models.s_test.argmax(-1)
    if which == "student wrong":
        idx = torch.nonzero(ps != y).flatten()
    elif which == "student and teacher disagree" and models.t_test is not None:
        idx = torch.nonzero(ps != models.t_test.argmax(-1)).flatten()
    elif which == "teacher unsure" and models.t_test is not None:
        top = torch.softmax(models.t_test, -1).max(-1).values
        idx = torch.argsort(top)[:limit]
    else:
        idx = torch.arange(len(y))
    return [int(i) for i in idx[:limit]]


def run_T(cfg: RunConfig) -> float | None:
    """The T the run trained with, if its method has one (the slider starts there)."""
    T = cfg.method.params.get("T")
    return float(T) if isinstance(T, (int, float)) else None


__all__ = ["RunModels", "TeacherNotCached", "checkpoint_state", "dkd_identity", "entropy_curve",
           "load_run_models", "run_T", "sample_image", "sample_indices", "sample_view", "softmax_T",
           "teacher_is_cached", "temperature_grid", "upscale", "wrong_classes_ranked",
           "SAMPLE_FILTERS", "T_MIN", "T_MAX"]
