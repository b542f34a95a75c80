"""GPU bench: CIFAR-size KD through the engine against a bare PyTorch loop on the same device.

resnet32x4 -> resnet8x4 Hinton KD (T 4, soft 0.9, hard 0.1), SGD, batch 128, on CIFAR-100 when it
is in the data folder, else on the synthetic CIFAR-shaped set (timing only). For AMP (bf16) on and
off it prints a markdown table of:
  - ms per step through the engine and in a bare loop (same model, data on the device, cached
    teacher logits, same optimiser), and their ratio (goal <= 1.10 with AMP)
  - images per second, and the peak device memory of each
  - a bare loop that runs the teacher every step, as mdistiller does (the engine should beat it)
Step times leave out the first ``log_every`` steps (warm-up, cuDNN autotuning), median of repeats.

With no CUDA device it says so in one line and exits 0; ``--device cpu`` runs the same code on the
CPU (tiny settings, e.g. ``--device cpu --steps 4 --batch 8 --teacher resnetx4:8:8``).
Usage: python bench/gpu.py [--steps 390] [--batch 128] [--repeats 3] [--device cuda|cpu]
       [--teacher resnetx4:32:32] [--student resnetx4:8:32] [--data auto|cifar100|cifar100_synthetic]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_bench_gpu_"))

import torch                                                    # noqa: E402
import torch.nn.functional as F                                 # noqa: E402

from kdengine import (DataConfig, DataUnavailable, Engine, Metrics, RunConfig, Store, build_model,
                      get_teacher, kd_loss, load_data, logits_of, model_label)
from kdengine.core.progress import say, track
from kdengine.run.trainer import memory_format


def model_spec(text: str) -> dict:
    arch, depth, width = text.split(":")
    return {"arch": arch, "depth": int(depth), "width": int(width)}


def pick_data(choice: str, n_samples: int) -> dict:
    """CIFAR-100 from the data folder when there (auto), else the synthetic set of ``n_samples``."""
    if choice in ("auto", "cifar100"):
        try:
            load_data(DataConfig(name="cifar100", download=False))
            return {"name": "cifar100", "download": False}
        except DataUnavailable as e:
            if choice == "cifar100":
                raise SystemExit(f"error: {e}")
    return {"name": "cifar100_synthetic", "n_samples": n_samples}


def config(args, data: dict, amp: bool) -> RunConfig:
    return RunConfig.from_dict({
        "data": data,
        "teacher": {"model": model_spec(args.teacher), "epochs": 1, "lr": 0.001},
        "student": model_spec(args.student),
        "method": {"name": "hinton", "params": {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}},
        "train": {"epochs": 1, "batch_size": args.batch, "optimizer": "sgd", "lr": 0.05,
                  "momentum": 0.9, "weight_decay": 5e-4, "device": args.device, "amp": amp,
                  "log_every": args.log_every, "checkpoint_every": 0, "seed": 0}})


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return float("nan")        # the CPU has no per-phase peak; the process max RSS is printed


def engine_step_ms(eng: Engine, cfg: RunConfig) -> float:
    """ms per step between the first and the last metrics flush of the run (each flush reads the
    losses back, so the device is synchronised there)."""
    marks: list[tuple[float, int]] = []

    def on(ev):
        if isinstance(ev, Metrics) and "progress" in ev.values:
            marks.append((time.perf_counter(), ev.step))
    rid = eng.submit(cfg, owner="bench")
    eng.subscribe(rid, on)
    status = eng.wait(rid)
    if status != "done":
        raise SystemExit(f"error: the engine run {status}: {eng.snapshot(rid).error}")
    if len(marks) < 2:
        raise SystemExit("error: too few steps to time; raise --steps or lower --log-every")
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return 1000 * (t1 - t0) / (s1 - s0)


def bare_step_ms(cfg: RunConfig, teacher, dev: torch.device, steps: int, warm: int,
                 live_teacher: bool) -> float:
    """The same training written as a plain loop: data and teacher logits on the device, KD + CE,
    SGD, bf16 autocast when AMP is on. ``live_teacher`` runs the teacher every step instead."""
    data = load_data(cfg.data)
    tc = cfg.train
    layout = memory_format("auto", cfg.student.arch, data.input_shape, dev)
    X = data.transfer.x.to(dev, memory_format=layout)
    Y = data.transfer.y.to(dev)
    t_logits = None if live_teacher else logits_of(teacher, X, dev)
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.n_classes).to(dev)
    student.to(memory_format=layout)
    opt = torch.optim.SGD(student.parameters(), lr=tc.lr, momentum=tc.momentum,
                          weight_decay=tc.weight_decay)
    amp = tc.amp and (dev.type == "cuda" or tc.device == "cpu")
    bs, n = tc.batch_size, len(Y)
    perm = torch.randperm(n, device=dev)
    student.train()
    teacher.eval()
    t0 = 0.0
    for i in range(steps):
        if i == warm:
            sync(dev)
            t0 = time.perf_counter()
        idx = perm[i * bs:(i + 1) * bs]
        x, y = X[idx], Y[idx]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            if live_teacher:
                with torch.no_grad():
                    t = teacher(x).float()
            else:
                t = t_logits[idx]
            s = student(x)
            loss = 0.9 * kd_loss(s.float(), t, 4.0) + 0.1 * F.cross_entropy(s.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(dev)
    return 1000 * (time.perf_counter() - t0) / (steps - warm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--steps", type=int, default=390, help="steps per timed run (390 = one "
                                                           "CIFAR-100 epoch at batch 128)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=0, help="engine flush interval (default "
                                                            "steps / 10)")
    ap.add_argument("--teacher", default="resnetx4:32:32", help="arch:depth:width")
    ap.add_argument("--student", default="resnetx4:8:32", help="arch:depth:width")
    ap.add_argument("--data", choices=("auto", "cifar100", "cifar100_synthetic"), default="auto")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, nothing measured (try --device cpu --steps 4).")
        return 0
    args.log_every = args.log_every or max(1, args.steps // 10)
    if args.steps < 2 * args.log_every:
        raise SystemExit("error: --steps must be at least twice --log-every")
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    data = pick_data(args.data, max(50, args.steps * args.batch))   # 50: the smallest data set
    base = config(args, data, amp=False)
    bundle = load_data(base.data)
    # a run is one epoch (on CIFAR-100 the whole set); the bare loop does the same steps
    args.steps = len(bundle.transfer) // args.batch
    eng = Engine(store=Store(), max_workers=1)
    teacher, _ = get_teacher(base, bundle, dev)              # trained once, then cached
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (1 thread)"
    rows = []
    for amp in (True, False):
        cfg = config(args, data, amp)
        engine_step_ms(eng, cfg)                             # warm-up: kernels, autotuning
        e_ms, b_ms, l_ms, e_mem, b_mem = [], [], [], [], []
        for _ in track(range(args.repeats), f"AMP {'on' if amp else 'off'}"):
            reset_peak(dev)
            e_ms.append(engine_step_ms(eng, cfg))
            e_mem.append(peak_mib(dev))
            reset_peak(dev)
            b_ms.append(bare_step_ms(cfg, teacher, dev, args.steps, args.log_every, False))
            b_mem.append(peak_mib(dev))
            l_ms.append(bare_step_ms(cfg, teacher, dev, args.steps, args.log_every, True))
        rows.append((amp, *(statistics.median(v) for v in (e_ms, b_ms, l_ms)), max(e_mem),
                     max(b_mem)))
    eng.shutdown()
    synthetic = data["name"].endswith("synthetic")
    print(f"{name}, torch {torch.__version__}; {model_label(base.teacher.model)} -> "
          f"{model_label(base.student)} Hinton KD, batch {args.batch}, {data['name']}"
          f"{' (synthetic: timing only)' if synthetic else ''}, {args.steps} steps per run, "
          f"median of {args.repeats}")
    print("\n| AMP (bf16) | engine ms/step | bare loop ms/step | engine / bare | engine img/s | "
          "bare img/s | teacher every step ms/step | peak MiB engine / bare |")
    print("|---|---|---|---|---|---|---|---|")
    for amp, e, b, live, me, mb in rows:
        print(f"| {'on' if amp else 'off'} | {e:.2f} | {b:.2f} | {e / b:.3f} | "
              f"{1000 * args.batch / e:,.0f} | {1000 * args.batch / b:,.0f} | {live:.2f} | "
              f"{me:,.0f} / {mb:,.0f} |")
    if dev.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        say(f"\npeak memory: no per-phase figure on the CPU; process max RSS {rss:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
