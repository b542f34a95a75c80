"""Engine overhead: the same KD training through the Engine and as a bare PyTorch loop, in one run.

Prints three ratios (medians over interleaved repeats, so machine noise hits both sides alike):
  1. engine / bare loop, same student, same Hinton KD loss, same steps and per-epoch evaluation
  2. KD epoch with cached teacher logits / CE-only epoch (what distillation itself costs)
  3. per training step alone (student forward, the method's weighted terms, backward, Adam; no
     evaluation): KD / CE and DKD / KD, methods interleaved in blocks of 20 steps (at most an epoch)
``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared
with other jobs, waiting for a core then does not count (the engine's threads do).
Runs are short (5 epochs) and many (45 repeats): this VM's speed drifts up to 2x within seconds, and
a pair of short runs side by side is more often measured at one speed than a pair of long ones.
``--student resnet8x4`` times a CIFAR-size student (resnet8x4, a resnetx4 8x8 teacher) on
``cifar10_synthetic`` (images drawn from a seed, no download; kdengine/data/datasets.py), 640 of
them: 10 steps an epoch. A step there takes about a second on one CPU thread, so ask for fewer
epochs, repeats and blocks (e.g. ``--epochs 2 --repeats 4 --blocks 4``).
Usage: python bench/overhead.py [--student mlp|resnet8x4] [--epochs 5] [--repeats 45] [--blocks 30]
       [--clock wall|cpu]
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
from kdengine.core.progress import track
from kdengine import get_method_class
from kdengine import Metrics, Phase
from kdengine.methods import Batch, TrainContext
from kdengine.run.trainer import train_step


clock = time.perf_counter          # --clock cpu: time.process_time


# The students timed: data, teacher and student config sections.
STUDENTS = {
    "mlp": {"data": {"name": "digits"},
            "teacher": {"model": {"arch": "mlp", "depth": 2, "width": 256}, "epochs": 20},
            "student": {"arch": "mlp", "depth": 1, "width": 32}},
    "resnet8x4": {"data": {"name": "cifar10_synthetic", "n_samples": 640},
                  "teacher": {"model": {"arch": "resnetx4", "depth": 8, "width": 8}, "epochs": 1},
                  "student": {"arch": "resnetx4", "depth": 8, "width": 32}},
}
student = "mlp"                    # --student


def config(epochs: int, method: str = "hinton") -> RunConfig:
    return RunConfig.from_dict({
        **STUDENTS[student],
        "method": {"name": method, "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}
                   if method == "hinton" else {}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "seed": 0, "log_every": 20,
                  "checkpoint_every": 0},
    })


def engine_time(eng: Engine, cfg: RunConfig) -> float:
    """Seconds from the student phase starting to its last evaluation, seen by a subscriber."""
    marks = {}

    def on(ev):
        if isinstance(ev, Phase) and ev.phase == "student":
            marks["start"] = clock()
        elif isinstance(ev, Metrics) and ev.epoch == cfg.train.epochs and "test_acc" in ev.values:
            marks["end"] = clock()
    run_id = eng.submit(cfg, owner="bench", subscriber=on)     # sees the run's every event
    assert eng.wait(run_id) == "done", eng.snapshot(run_id).error
    return marks["end"] - marks["start"]


def bare_time(cfg: RunConfig, teacher, hinton: bool = True) -> float:
    """The same work written as a plain loop: KD + CE, Adam, evaluate per epoch. Batches come the
    way the engine takes them on a set this small: the tensors permuted once per epoch (one index
    each) and sliced per step. The loss is the plain one (kd_loss on the teacher's logits, which
    recomputes the teacher's softmax each step), as a user would write it."""
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
    t0 = clock()
    for _ in range(cfg.train.epochs):
        student.train()
        perm = torch.randperm(n, generator=g)
        xs, ys, ts = X[perm], Y[perm], t_logits[perm]
        for i in range(spe):
            rows = slice(i * bs, (i + 1) * bs)
            s = student(xs[rows])
            if hinton:
                loss = 0.9 * kd_loss(s, ts[rows], 4.0) + 0.1 * F.cross_entropy(s, ys[rows])
            else:
                loss = F.cross_entropy(s, ys[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(student, data, dev, t_test)
    return clock() - t0


def step_costs(cfg: RunConfig, teacher, blocks: int, block: int = 20) -> dict[str, list[float]]:
    """ms per step of CE, Hinton KD and DKD, one value per block, each method's step as the trainer
    runs it (batches sliced from tensors and the teacher's cached logits put in the block's order,
    the trainer's ``train_step``), interleaved block by block: the i-th values of the methods ran
    side by side."""
    data = load_data(cfg.data)
    cpu = torch.device("cpu")
    X, Y = data.transfer.x, data.transfer.y
    t_logits = logits_of(teacher, X, cpu)                    # as the trainer caches them
    bs, n = cfg.train.batch_size, len(Y)
    ones = torch.ones(bs, dtype=torch.bool)
    runners = {}
    for name, params in (("ce", {}), ("hinton", {}), ("dkd", {"warmup_epochs": 0.0})):
        cls = get_method_class(name)
        torch.manual_seed(0)
        student = build_model(cfg.student, data.input_shape, data.n_classes)
        ctx = TrainContext(steps_per_epoch=n // bs, epochs=1, n_classes=data.n_classes,
                           input_shape=data.input_shape, device=cpu, data_kind=data.kind)
        m = cls(student, [teacher] if cls.needs_teacher else [], cls.Params(**params), ctx)
        runners[name] = (m, torch.optim.Adam(student.parameters(), lr=cfg.train.lr))
    g = torch.Generator().manual_seed(0)

    def run(name: str) -> float:
        m, opt = runners[name]
        perm = torch.randperm(n, generator=g)
        t0 = clock()
        xs, ys = X[perm], Y[perm]
        ts = t_logits[perm] if m.needs_teacher else None
        for i in range(block):
            rows = slice(i * bs, (i + 1) * bs)
            batch = Batch(xs[rows], ys[rows], ones, perm[rows], None if ts is None else [ts[rows]])
            train_step(m, batch, 10_000, opt, None)
        return 1000 * (clock() - t0) / block

    for name in runners:                  # warm-up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in track(range(blocks), "step blocks"):
        for name in runners:
            times[name].append(run(name))
    return times


def spread(values: list[float]) -> str:
    """Median and interquartile range."""
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3f} (IQR {q1:.3f}-{q3:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=45)
    ap.add_argument("--blocks", type=int, default=30, help="interleaved blocks for the step costs")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--student", choices=tuple(STUDENTS), default="mlp")
    args = ap.parse_args()
    global clock, student
    student = args.student
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
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
    timers = {"engine": lambda: engine_time(eng, kd_cfg), "bare": lambda: bare_time(kd_cfg, teacher),
              "ce": lambda: engine_time(eng, ce_cfg)}
    for i in track(range(args.repeats), "repeats"):
        # The three runs of a repeat sit side by side; odd repeats run them in reverse order so a
        # machine speeding up or slowing down during a repeat favours neither side.
        order = list(timers) if i % 2 == 0 else list(reversed(timers))
        t = {k: timers[k]() for k in order}
        e, b, c = t["engine"], t["bare"], t["ce"]
        e_times.append(e)
        b_times.append(b)
        ratios.append(e / b)
        kd_ce.append(e / c)
    eng.shutdown()
    steps = args.epochs * (len(data.transfer) // 64)
    what = {"mlp": "digits, MLP 1x32 student",
            "resnet8x4": "cifar10_synthetic (640 images), resnet8x4 student"}[student]
    print(f"{what}, batch 64, {steps} steps + {args.epochs} evaluations, "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 1 thread, {args.clock} clock")
    print(f"engine {statistics.median(e_times):.3f} s, bare loop {statistics.median(b_times):.3f} s "
          f"({1000 * statistics.median(b_times) / steps:.3f} ms/step)")
    print(f"engine / bare loop (median of {args.repeats}): {statistics.median(ratios):.3f}  "
          f"(all: {', '.join(f'{r:.3f}' for r in ratios)})")
    # The goals hold for a realistic student; on the tiny MLP the loss is a visible share of a step
    goal = "  (goal <= 1.10)" if student == "resnet8x4" else ""
    print(f"KD epoch (cached teacher logits) / CE-only epoch: {spread(kd_ce)}{goal}")
    block = min(20, len(data.transfer) // 64)       # a block's batches come from one permutation
    times = step_costs(kd_cfg, teacher, args.blocks, block)
    ms = {name: statistics.median(v) for name, v in times.items()}
    kd_ce_step = [k / c for k, c in zip(times["hinton"], times["ce"])]     # block by block
    dkd_kd_step = [d / k for d, k in zip(times["dkd"], times["hinton"])]
    print(f"per step alone (median of {args.blocks} blocks of {block}): CE {ms['ce']:.3f} ms, KD "
          f"{ms['hinton']:.3f} ms, DKD {ms['dkd']:.3f} ms; per block side by side: KD / CE "
          f"{spread(kd_ce_step)}{goal}, DKD / KD {spread(dkd_kd_step)}")


if __name__ == "__main__":
    main()
