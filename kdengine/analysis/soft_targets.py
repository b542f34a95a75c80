"""Soft-target explorer: the numbers behind the "Soft targets" page, with no UI code.

Given a stored (finished or live) run's models (:func:`kdengine.run.stored.load_run_models`), look
at one sample: the softmax at temperature T
(Hinton, Vinyals & Dean 2015), entropy against T, the wrong classes ranked by the teacher ("dark
knowledge"), and DKD's split of the KD loss (Zhao et al., CVPR 2022) with the identity
``KL = TCKD + (1 - p_t) * NCKD`` filled in.

All quantities here are per sample and *without* the T^2 factor the training loss carries.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdengine.core.config import RunConfig
from kdengine.core.registry import get_method_class
from kdengine.data import DataBundle
from kdengine.losses.logits import dkd_per_sample, entropy, kl_div, soften

T_MIN, T_MAX = 0.5, 20.0
T_STEP = 0.25           # the page's T slider runs in the browser over every value of this grid


def slider_temperatures() -> list[float]:
    """Every T the page's slider can show, T_MIN..T_MAX in steps of T_STEP (computed once per
    sample, so moving the slider never asks the server)."""
    n = int(round((T_MAX - T_MIN) / T_STEP))
    return [round(T_MIN + k * T_STEP, 4) for k in range(n + 1)]


def snap_T(T: float) -> float:
    """The slider value nearest to T (a URL or a run may name a T between two grid values)."""
    return min(slider_temperatures(), key=lambda t: (abs(t - T), t))


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


def sample_view(models, index: int, T: float) -> dict[str, Any]:
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


def sample_views(models, index: int, Ts: list[float]) -> list[dict[str, Any]]:
    """:func:`sample_view` at each T of ``Ts``: what the page's client-side T slider steps through."""
    return [sample_view(models, index, T) for T in Ts]


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


def sample_indices(models, which: str = "all", limit: int = 48) -> list[int]:
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
    try:
        cls = get_method_class(cfg.method.name)
    except KeyError:            # a stored run of a method no longer registered
        return None
    return cls.temperature_of(cfg.method.params)


__all__ = ["dkd_identity", "entropy_curve", "run_T", "sample_image", "sample_indices", "sample_view", "sample_views",
           "slider_temperatures", "snap_T", "softmax_T",
           "temperature_grid", "upscale", "wrong_classes_ranked",
           "SAMPLE_FILTERS", "T_MIN", "T_MAX", "T_STEP"]
