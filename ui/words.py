"""Plain words for students: human names for metrics and config fields, one place for every page.

Pages show ``metric_name("final_test_acc")`` ("test accuracy"), never the stored key, and
``knob_label("method.params.T")`` ("temperature T"), never the dotted config path; widgets built from
knob metadata take their labels from ``FIELD_LABELS`` when the knob has no label of its own. Chart
titles, axis titles and legends use the same names. A message from the engine that names a field
(a refused value, a link's problem) goes through :func:`plain` or :func:`error_text` before a page
shows it: the engine keeps the dotted path for the command line, the page says the knob's name.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdengine import ConfigError

METRIC_NAMES = {
    "final_test_acc": "test accuracy",
    "test_acc": "test accuracy",
    "final_train_acc": "training accuracy",
    "train_acc": "training accuracy",
    "val_acc": "validation accuracy",
    "teacher_test_acc": "teacher's test accuracy",
    "baseline_test_acc": "student alone: test accuracy",
    "agreement": "agrees with the teacher",
    "final_agreement": "agrees with the teacher",
    "kl_test": "distance from the teacher (KL)",
    "final_kl_test": "distance from the teacher (KL)",
    "magsim": "boundary distance match (MagSim)",
    "angsim": "boundary direction match (AngSim)",
    "omitted_class_acc": "accuracy on the left-out class",
    "test_f1": "test F1 (micro)",
    "test_exact": "exact-match test accuracy",
    "elapsed_s": "training time (s)",
    "epoch_s": "seconds per epoch",
    "samples_per_s": "samples per second",
    "lr": "learning rate",
}

# Config fields whose own names mean little to a student (the knob's help stays as the tooltip).
FIELD_LABELS = {
    "transfer": "what the student learns from",
    "baseline": "student alone, for comparison",
    "omit_class": "leave out one class",
    "n_labels": "labelled samples kept",
    "test_fraction": "share held out for testing",
    "val_fraction": "share held out for validation",
    "heldout_fraction": "share held out for the transfer set",
    "boundary_metrics": "measure boundary similarity (MagSim / AngSim)",
    "log_every": "steps between live points",
    "checkpoint_every": "epochs between checkpoints",
    "soft_weight": "soft weight",
    "hard_weight": "hard weight",
    "T": "temperature T",
    "t_squared": "multiply soft term by T²",
    "alpha": "alpha (TCKD weight)",
    "beta": "beta (NCKD weight)",
    "warmup_epochs": "warm-up epochs",
    "arch": "architecture",
    "lr": "learning rate",
    "optimizer": "optimiser",
    "batch_size": "batch size",
    "weight_decay": "weight decay",
    "amp": "bf16 mixed precision",
    "channels_last": "channels-last memory layout",
    "compile": "compile the student",
    "data_dir": "data folder",
    "download": "download when absent",
    "value_loss": "how outputs are matched",
    "attack_rule": "attack rule",
    "attack_every": "attack every n-th step",
    "probe_size": "MagSim / AngSim probes",
}

# Dotted fields whose section changes what the field means ("seed" of the split or of the student).
PATH_LABELS = {
    "data.name": "data set",
    "data.seed": "data split seed",
    "data.noise": "data noise",
    "train.seed": "seed",
    "train.epochs": "epochs",
    "teacher.epochs": "teacher epochs",
    "teacher.lr": "teacher learning rate",
    "teacher.source": "teacher",
    "teacher.checkpoint": "teacher checkpoint",
    "method.name": "method",
    "i": "sample",              # the Soft targets page's link parameters
    "run": "run",
}

SECTIONS = ("method", "train", "data", "teacher", "student")
# A dotted config path in running text (``method.params.T``, ``teacher.model.width``).
CONFIG_KEY = re.compile(r"\b(?:method\.params|method|train|data|teacher\.model|teacher|student)"
                        r"\.[A-Za-z_]\w*")


def metric_name(key: str) -> str:
    """'final_test_acc' -> 'test accuracy', 'loss/kd' -> 'loss term: kd'; unknown keys lose their
    underscores."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("loss/"):
        term = key.split("/", 1)[1]
        return "total loss" if term == "total" else f"loss term: {term}"
    if key.startswith("final_"):
        return metric_name(key[len("final_"):])
    return key.replace("_", " ")


def field_label(name: str, own: str | None = None) -> str:
    return own or FIELD_LABELS.get(name) or name.replace("_", " ")


def knob_label(path: str, spec: dict | None = None) -> str:
    """A dotted config path in words: 'method.params.T' -> 'temperature T', 'student.width' ->
    'student width', 'teacher.model.depth' -> 'teacher depth'. ``spec`` (a knob's metadata, with its
    own label) is used when given."""
    if path in PATH_LABELS:
        return PATH_LABELS[path]
    parts = path.split(".")
    if len(parts) > 1 and parts[0] not in SECTIONS:
        return path             # not a config field (a link's own typo): as it was written
    label = field_label(parts[-1], (spec or {}).get("label"))
    if parts[0] in ("teacher", "student") and len(parts) > 1 and not label.startswith(parts[0]):
        return f"{parts[0]} {label}"
    return label


def plain(text: str) -> str:
    """Every dotted config path in ``text`` replaced by its name in words."""
    return CONFIG_KEY.sub(lambda m: knob_label(m.group(0)), str(text))


def error_text(e: ConfigError, label: str | None = None) -> str:
    """A refused value as a page shows it: 'temperature T must be > 0.0, got -1.0' (the exception
    keeps 'method.params.T: T must be ...' for the command line). ``label``: the knob's own label,
    where the page has it."""
    return _named(e.field or "", e.message, label)


def problem_text(problem: str) -> str:
    """One 'field: reason' problem (a refused link value) in words."""
    m = re.match(r"^([\w.]+): (.*)$", problem, re.S)
    return _named(m.group(1), m.group(2)) if m else plain(problem)


def _named(field: str, message: str, label: str | None = None) -> str:
    message = plain(message)
    if not field:
        return message
    name = field.rsplit(".", 1)[-1]
    label = label or knob_label(field)
    if message.startswith(name + " "):
        return label + message[len(name):]
    return f"{label}: {message}"
