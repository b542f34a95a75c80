"""The omitted-class lesson (Hinton, Vinyals & Dean 2015, section 3).

Hinton removed every 3 from the student's transfer set. The distilled student still learnt 3s from
the soft targets of the other digits (the teacher's "3-ness" of 2s, 5s, 8s...), but its bias for
class 3 stayed too low: 206 test errors, 133 of them on the 1010 threes; raising the bias of class 3
by 3.5 brought most of them back. This module measures that on a trained student: per-class accuracy,
and accuracy with a bias shift on the omitted class's logit, applied at evaluation only.

The paper picked the shift on the test set; ``bias_curve`` shows the whole curve so a user can see
how sensitive it is, and ``best_shift`` names the paper's choice rule without hiding that it looks at
test labels.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor


def per_class_accuracy(logits: Tensor, y: Tensor, n_classes: int | None = None) -> list[float]:
    """Accuracy on the test samples of each class (NaN for a class with no samples)."""
    n_classes = n_classes or logits.shape[1]
    pred = logits.argmax(-1)
    out = []
    for c in range(n_classes):
        m = y == c
        out.append(float((pred[m] == c).float().mean()) if bool(m.any()) else float("nan"))
    return out


def shift_bias(logits: Tensor, cls: int, shift: float) -> Tensor:
    """Logits with ``shift`` added to class ``cls`` (the same as raising that output's bias)."""
    out = logits.clone()
    out[:, cls] += shift
    return out


def omitted_report(logits: Tensor, y: Tensor, cls: int, shift: float = 0.0) -> dict[str, Any]:
    """Overall and omitted-class accuracy and error counts, with the bias shift applied."""
    z = shift_bias(logits, cls, shift) if shift else logits
    pred = z.argmax(-1)
    wrong = pred != y
    on_cls = y == cls
    return {"shift": float(shift), "acc": float((~wrong).float().mean()),
            "class_acc": float((~wrong[on_cls]).float().mean()) if bool(on_cls.any()) else float("nan"),
            "errors": int(wrong.sum()), "class_errors": int((wrong & on_cls).sum()),
            "n_class": int(on_cls.sum()), "n": int(len(y)),
            # Errors that predict the omitted class when it is not the answer: what a too-large
            # shift costs.
            "false_class": int((wrong & (pred == cls)).sum()),
            "per_class_acc": per_class_accuracy(z, y)}


def bias_curve(logits: Tensor, y: Tensor, cls: int, shifts: Iterable[float]) -> list[dict]:
    return [omitted_report(logits, y, cls, s) for s in shifts]


def best_shift(logits: Tensor, y: Tensor, cls: int, shifts: Iterable[float]) -> float:
    """The shift with the fewest errors on (logits, y): Hinton's choice rule (on the test set)."""
    reps = bias_curve(logits, y, cls, shifts)
    return min(reps, key=lambda r: (r["errors"], abs(r["shift"])))["shift"]


@torch.no_grad()
def omitted_metrics(student: torch.nn.Module, data, device, cls: int) -> dict[str, float]:
    """Per-epoch metric for runs with ``data.omit_class`` set: accuracy on the omitted class."""
    from kdengine.models import logits_of
    logits = logits_of(student, data.test.x, device)
    y = data.test.y.to(device)
    m = y == cls
    if not bool(m.any()):
        return {}
    return {"omitted_class_acc": float((logits[m].argmax(-1) == cls).float().mean())}


def run_test_logits(run_id: str, store=None) -> dict[str, Any]:
    """Rebuild a finished run's student from its checkpoint; its test logits and labels.

    Returns {"logits", "y", "class_names", "omit_class", "config"}. Raises KeyError for an unknown
    run and FileNotFoundError when the run has no checkpoint (it never finished an epoch)."""
    from kdengine.core.config import RunConfig
    from kdengine.data.datasets import load_data
    from kdengine.models.families import build_model
    from kdengine.core.store import Store
    from kdengine.core.checkpoints import load_state_into, read_run_checkpoint
    from kdengine.models import logits_of
    store = store or Store()
    row = store.get_run(run_id)
    if row is None:
        raise KeyError(f"no run {run_id}")
    path = store.checkpoint_path(run_id)
    if not path.exists():
        raise FileNotFoundError(f"run {run_id} has no student checkpoint")
    cfg = RunConfig.from_dict(row["config"])
    data = load_data(cfg.data)
    model = build_model(cfg.student, data.input_shape, data.n_classes)
    load_state_into(model, read_run_checkpoint(path).state_dict, f"run {run_id}'s checkpoint")
    dev = torch.device("cpu")
    return {"logits": logits_of(model, data.test.x, dev).cpu(), "y": data.test.y.clone(),
            "class_names": list(data.class_names), "omit_class": cfg.data.omit_class,
            "config": cfg}


def omits_a_class(run) -> bool:
    """Whether a run's config sets ``data.omit_class``. ``run``: anything with a ``config`` dict
    (a ``RunSnapshot``; this package sits below the engine's, so it names no run type)."""
    return (run.config.get("data") or {}).get("omit_class") is not None


def omitted_runs(runs: Iterable) -> list:
    """The finished runs among ``runs`` (``RunSnapshot``s, e.g. ``Engine.list_runs()``) whose
    config sets ``data.omit_class``, in their order."""
    return [r for r in runs if r.status in ("done", "stopped") and omits_a_class(r)]
