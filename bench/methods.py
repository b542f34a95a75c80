"""Every distillation method: student test accuracy and time per epoch relative to Hinton KD.

Same teacher (MLP 2x256, 30 epochs, cached), same student (MLP 1x32), 20 epochs, batch 64, lr 0.003,
each method at its default knobs, seeds 0, 1, 2 (the student's seed; the data split is fixed).
Settings (``--setting``): ``digits`` (all labels: there the student alone is as good as any method,
so the table says little about the methods), ``few-labels`` (digits, 50 labels) and ``hierarchy``
(100 classes in 20 superclasses, kdengine/data/hierarchy.py: rich non-target knowledge).
Seeds are the outer loop so machine noise spreads over all methods alike. Time per epoch is the
student phase (training steps + the per-epoch evaluation every method shares) divided by the epochs;
"steps only" leaves out that evaluation (the training steps alone, the method's own cost); one-off
setup (training specialists or extra teachers) is reported apart.
Prints a markdown table. Usage: python bench/methods.py [--setting hierarchy] [--seeds 3] [--epochs 20]
[--methods a,b]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_bench_"))

import torch

from kdengine import Metrics, Phase, RunConfig, train
from kdengine.core.progress import track

# (label, method, params); the student alone first, Hinton KD is the reference row.
METHODS = [
    ("student alone (ce)", "ce", {}),
    ("hinton", "hinton", {}),
    ("logit_mse", "logit_mse", {}),
    ("dkd", "dkd", {"warmup_epochs": 5}),
    ("noisy_teacher", "noisy_teacher", {}),
    ("noisy_student", "noisy_teacher", {"noisy_student": True}),
    ("sobolev", "sobolev", {}),
    ("fitnet (stagewise, the paper)", "fitnet", {}),
    ("fitnet (joint)", "fitnet", {"schedule": "joint"}),
    ("fitnet (mdistiller)", "fitnet_mdistiller", {}),
    ("dml (cohort of 2)", "dml", {}),
    ("dml (online, teacher arch)", "dml", {"mode": "online"}),
    ("multi_teacher (3 teachers)", "multi_teacher", {}),
    ("specialists", "specialists", {}),
    ("adversarial", "adversarial", {}),
]


SETTINGS = {
    "digits": {"name": "digits"},
    "few-labels": {"name": "digits", "transfer": "labels", "n_labels": 50},
    "hierarchy": {"name": "hierarchy", "n_samples": 6000, "noise": 1.0, "hier_classes": 100,
                  "hier_superclasses": 20},
}


def config(method: str, params: dict, seed: int, epochs: int, setting: str = "digits") -> RunConfig:
    return RunConfig.from_dict({
        "data": SETTINGS[setting],
        "teacher": {"source": "none" if method == "ce" else "train",
                    "model": {"arch": "mlp", "depth": 2, "width": 256}, "epochs": 30},
        "student": {"arch": "mlp", "depth": 1, "width": 32},
        "method": {"name": method, "params": params},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "seed": seed, "log_every": 20,
                  "checkpoint_every": 0}})


def run_one(cfg: RunConfig) -> dict:
    """One run; times from the trainer's events: the student phase start, the last metrics flush
    of each epoch (sent right before that epoch's evaluation) and each evaluation's metrics."""
    marks: dict[str, float] = {}
    train_s = [0.0]
    last = {"epoch_start": None, "flush": None}

    def emit(ev):
        now = time.perf_counter()
        if isinstance(ev, Phase) and ev.phase not in marks:
            marks[ev.phase] = now
            if ev.phase == "student":
                last["epoch_start"] = now
        elif isinstance(ev, Metrics) and "progress" in ev.values:
            last["flush"] = now
        elif isinstance(ev, Metrics) and "test_acc" in ev.values and last["flush"]:
            train_s[0] += last["flush"] - last["epoch_start"]
            last["epoch_start"] = now
    summary = train(cfg, emit)
    end = time.perf_counter()
    setup = marks["student"] - marks.get("setup", marks["student"])
    n = cfg.train.epochs
    return {"acc": summary["final_test_acc"], "epoch_s": (end - marks["student"]) / n,
            "train_s": train_s[0] / n, "setup_s": setup,
            "teacher_acc": summary.get("teacher_test_acc")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=list(SETTINGS), default="digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--methods", default="", help="comma-separated labels to keep (default all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [m for m in METHODS if not args.methods or m[0] in args.methods.split(",")]
    res: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    teacher_acc = None
    # Warm-up: trains and caches the teacher, and pays one-off import costs (the first optimiser
    # construction imports torch._dynamo, seconds here) outside the timed runs.
    run_one(config("hinton", {}, 0, 1, args.setting))
    for seed in track(range(args.seeds), "seeds"):
        for label, method, params in rows:
            r = run_one(config(method, params, seed, args.epochs, args.setting))
            res[label].append(r)
            teacher_acc = teacher_acc or r["teacher_acc"]
            print(f"seed {seed} {label:<28} acc {r['acc']:.4f}  {r['epoch_s'] * 1000:7.1f} ms/epoch "
                  f"{r['train_s'] * 1000:7.1f} ms steps",
                  file=sys.stderr, flush=True)
    ref = res.get("hinton")
    ref_acc = statistics.mean(r["acc"] for r in ref) if ref else float("nan")
    ref_t = statistics.median(r["epoch_s"] for r in ref) if ref else float("nan")
    ref_s = statistics.median(r["train_s"] for r in ref) if ref else float("nan")
    print(f"\nSetting {args.setting}. Teacher MLP 2x256: test accuracy {teacher_acc:.2%}. "
          f"Student MLP 1x32, {args.epochs} "
          f"epochs, seeds 0-{args.seeds - 1}; accuracy is mean ± sd over seeds.\n")
    print("| method | student test acc | vs Hinton KD (pts) | epoch time vs KD | steps only vs KD "
          "| setup (s) |")
    print("|---|---|---|---|---|---|")
    for label, _, _ in rows:
        accs = [r["acc"] for r in res[label]]
        mean = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        t = statistics.median(r["epoch_s"] for r in res[label])
        ts = statistics.median(r["train_s"] for r in res[label])
        setup = statistics.median(r["setup_s"] for r in res[label])
        delta = "—" if label == "hinton" else f"{(mean - ref_acc) * 100:+.2f}"
        print(f"| {label} | {mean:.2%} ± {sd * 100:.2f} | {delta} | {t / ref_t:.2f}x | "
              f"{ts / ref_s:.2f}x | {setup:.1f} |")
    print(f"\nHinton KD: {ref_t * 1000:.0f} ms per epoch, of which {ref_s * 1000:.0f} ms training "
          f"steps (torch {torch.__version__}, {os.cpu_count()} CPU cores visible, 1 thread).")


if __name__ == "__main__":
    main()
