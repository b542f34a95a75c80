"""Engine overhead: the same KD training through the Engine and as a bare PyTorch loop, in one run.

Prints two ratios (medians over interleaved repeats, so machine noise hits both sides alike):
  1. engine / bare loop, same student, same Hinton KD loss, same steps and per-epoch evaluation
  2. KD epoch with cached teacher logits / CE-only epoch (what distillation itself costs)
Usage: python bench/overhead.py [--epochs 30] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_bench_"))

import torch
import torch.nn.functional as F

from kdengine import (Engine, RunConfig, Store, build_model, evaluate, get_teacher, kd_loss, load_data,
                      logits_of)


def config(epochs: int, method: str = "hinton") -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"model": {"arch": "mlp", "depth": 2, "width": 256}, "epochs": 20},
        "student": {"arch": "mlp", "depth": 1, "width": 32},
        "method": {"name": method, "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}
                   if method == "hinton" else {}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "seed": 0, "log_every": 20,
                  "checkpoint_every": 0},
    })


def engine_time(eng: Engine, cfg: RunConfig) -> float:
    """Seconds from the student phase starting to its last evaluation, seen by a subscriber."""
    marks = {}

    def on(ev):
        if ev["type"] == "phase" and ev["phase"] == "student":
            marks["start"] = time.perf_counter()
        elif ev["type"] == "metrics" and ev["epoch"] == cfg.train.epochs and "test_acc" in ev["values"]:
            marks["end"] = time.perf_counter()
    rid = eng.store.create_run  # noqa: F841  (submit creates it)
    run_id = eng.submit(cfg, owner="bench")
    eng.subscribe(run_id, on)
    assert eng.wait(run_id) == "done", eng.snapshot(run_id)["error"]
    if "start" not in marks:       # subscribed after the phase event: fall back to the trainer's clock
        return eng.snapshot(run_id)["series"]["elapsed_s"][-1][2]
    return marks["end"] - marks["start"]


def bare_time(cfg: RunConfig, teacher, hinton: bool = True) -> float:
    """The same work written as a plain loop: randperm batches, KD + CE, Adam, evaluate per epoch."""
    data = load_data(cfg.data)
    dev = torch.device("cpu")
    X, Y = data.transfer.x, data.transfer.y
    t_logits = logits_of(teacher, X, dev)
    t_test = logits_of(teacher, data.test.x, dev)
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.n_classes)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(0)
    bs, n = cfg.train.batch_size, len(Y)
    spe = n // bs
    t0 = time.perf_counter()
    for _ in range(cfg.train.epochs):
        student.train()
        perm = torch.randperm(n, generator=g)
        for i in range(spe):
            idx = perm[i * bs:(i + 1) * bs]
            s = student(X[idx])
            if hinton:
                loss = 0.9 * kd_loss(s, t_logits[idx], 4.0) + 0.1 * F.cross_entropy(s, Y[idx])
            else:
                loss = F.cross_entropy(s, Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(student, data, dev, t_test)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    eng = Engine(store=Store(), max_workers=1)
    kd_cfg, ce_cfg = config(args.epochs), config(args.epochs, "ce").with_overrides(
        {"teacher.source": "none"})
    data = load_data(kd_cfg.data)
    teacher, _ = get_teacher(kd_cfg, data, torch.device("cpu"))   # train once: cached afterwards
    engine_time(eng, config(1))                                     # warm-up
    bare_time(config(1), teacher)
    ratios, kd_ce = [], []
    e_times, b_times = [], []
    for _ in range(args.repeats):
        e = engine_time(eng, kd_cfg)
        b = bare_time(kd_cfg, teacher)
        c = engine_time(eng, ce_cfg)
        e_times.append(e)
        b_times.append(b)
        ratios.append(e / b)
        kd_ce.append(e / c)
    eng.shutdown()
    steps = args.epochs * (len(data.transfer) // 64)
    print(f"digits, MLP 1x32 student, batch 64, {steps} steps + {args.epochs} evaluations, "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 1 thread")
    print(f"engine {statistics.median(e_times):.3f} s, bare loop {statistics.median(b_times):.3f} s "
          f"({1000 * statistics.median(b_times) / steps:.3f} ms/step)")
    print(f"engine / bare loop (median of {args.repeats}): {statistics.median(ratios):.3f}  "
          f"(goal <= 1.05; all: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"KD epoch (cached teacher logits) / CE-only epoch: {statistics.median(kd_ce):.3f}  "
          f"(goal <= 1.10)")


if __name__ == "__main__":
    main()
