"""Plain words for students: human names for metrics and config fields, one place for every page.

Pages show ``metric_name("final_test_acc")`` ("test accuracy"), never the stored key; widgets built
from knob metadata take their labels from ``FIELD_LABELS`` when the knob's own label is a raw name.
"""
from __future__ import annotations

METRIC_NAMES = {
    "final_test_acc": "test accuracy",
    "test_acc": "test accuracy",
    "train_acc": "training accuracy",
    "teacher_test_acc": "teacher's test accuracy",
    "baseline_test_acc": "student alone: test accuracy",
    "agreement": "agrees with the teacher",
    "kl_test": "distance from the teacher (KL)",
    "magsim": "boundary distance match (MagSim)",
    "angsim": "boundary direction match (AngSim)",
    "omitted_class_acc": "accuracy on the left-out class",
}

# Config fields whose own names mean little to a student (the knob's help stays as the tooltip).
FIELD_LABELS = {
    "transfer": "what the student learns from",
    "baseline": "student alone, for comparison",
    "omit_class": "leave out one class",
    "n_labels": "labelled samples kept",
    "test_fraction": "share held out for testing",
    "heldout_fraction": "share held out for the transfer set",
    "boundary_metrics": "measure boundary similarity (MagSim / AngSim)",
    "log_every": "steps between live points",
    "checkpoint_every": "epochs between checkpoints",
    "soft_weight": "weight on the teacher's soft targets",
    "hard_weight": "weight on the true labels",
    "T": "temperature T",
}

def metric_name(key: str) -> str:
    """'final_test_acc' -> 'test accuracy'; unknown keys lose their underscores."""
    return METRIC_NAMES.get(key) or key.replace("_", " ")


def field_label(name: str, own: str | None = None) -> str:
    return own or FIELD_LABELS.get(name) or name.replace("_", " ")
