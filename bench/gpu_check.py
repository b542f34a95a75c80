"""GPU path checks, for the day a CUDA machine is lent: what the CPU tests cannot show.

    python bench/gpu_check.py [--device cuda|cpu] [--steps 20]

Needs torch only (no pytest, no Streamlit: a lent GPU machine has neither). On the device:
  1. training steps make no host sync: ``torch.cuda.set_sync_debug_mode("error")`` around
     ``train_step`` of Hinton KD and DKD on a CIFAR-size student with cached teacher logits (CUDA
     only);
  2. a short engine run (resnet8x4-shaped student, synthetic CIFAR-100, AMP, channels_last) ends
     done with finite losses.
Prints one line per check and exits 1 if any fails. With no CUDA device (and no ``--device cpu``) it
says so in one line and exits 0; ``--device cpu`` runs check 2 here (tests/test_bench_gpu.py).
Then run ``python bench/gpu.py`` for the figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_gpu_check_"))

import torch                                                    # noqa: E402

from kdengine import Engine, RunConfig, Store, get_method_class   # noqa: E402
from kdengine.methods import Batch, TrainContext                # noqa: E402
from kdengine.run.trainer import train_step                     # noqa: E402

CASES = [("hinton", {"T": 4.0, "soft_weight": 0.9, "hard_weight": 0.1}),
         ("dkd", {"T": 4.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_epochs": 0.0})]


def method_and_batch(name: str, params: dict, dev: torch.device, student: torch.nn.Module,
                     x: torch.Tensor, k: int, b: int = 64, seed: int = 0):
    """A method with a cached teacher on ``dev`` and one batch read the trainer's way (the set in
    an epoch's order, the batch a slice of it)."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    t = (torch.randn(n, k, generator=g) * 3).to(dev)
    y = torch.randint(0, k, (n,), generator=g).to(dev)
    cls = get_method_class(name)
    ctx = TrainContext(steps_per_epoch=n // b, epochs=4, n_classes=k, input_shape=tuple(x.shape[1:]),
                       device=dev)
    method = cls(student, [torch.nn.Identity()], cls.Params(**params), ctx)
    perm = torch.randperm(n, generator=g).to(dev)
    rows = slice(0, b)
    xs, ys, ts = x.to(dev)[perm], y[perm], t[perm]
    batch = Batch(xs[rows], ys[rows], torch.ones(b, dtype=torch.bool, device=dev), perm[rows],
                  [ts[rows]])
    return method, batch


def check_no_sync(dev: torch.device, steps: int) -> str:
    """``train_step`` of Hinton KD and DKD on a resnet8x4-shaped student, AMP, no host sync."""
    from kdengine import ModelConfig, build_model
    for name, params in CASES:
        torch.manual_seed(0)
        student = build_model(ModelConfig(arch="resnetx4", depth=8, width=32), (3, 32, 32), 100)
        student = student.to(dev, memory_format=torch.channels_last)
        x = torch.randn(512, 3, 32, 32).to(memory_format=torch.channels_last)
        method, batch = method_and_batch(name, params, dev, student, x, 100, b=128)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
        train_step(method, batch, 0, opt, None, amp)       # warm-up: allocations, cuDNN choices
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, steps + 1):
                train_step(method, batch, step, opt, None, amp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return f"{steps} steps each of Hinton KD and DKD, bf16, channels_last"


def check_engine_run(dev: torch.device) -> str:
    """A short engine run on the device: done, finite losses."""
    tiny = dev.type == "cpu"
    cfg = RunConfig.from_dict({
        "data": {"name": "cifar100_synthetic", "n_samples": 512 if tiny else 5000},
        "teacher": {"model": {"arch": "resnetx4", "depth": 8, "width": 8 if tiny else 32},
                    "epochs": 1},
        "student": {"arch": "resnetx4", "depth": 8, "width": 8 if tiny else 32},
        "method": {"name": "hinton"},
        "train": {"epochs": 1, "batch_size": 64, "device": dev.type, "amp": True,
                  "channels_last": "on", "log_every": 4, "checkpoint_every": 0}})
    eng = Engine(store=Store(), max_workers=1)
    try:
        run_id = eng.submit(cfg, owner="gpu-check")
        status = eng.wait(run_id, timeout=1200)
        snap = eng.snapshot(run_id)
    finally:
        eng.shutdown()
    if status != "done":
        raise AssertionError(f"run {status}: {snap.error}")
    losses = [v for _, _, v in snap.series["loss/total"]]
    if not losses or not all(v == v and abs(v) < float("inf") for v in losses):
        raise AssertionError(f"losses {losses[:5]}")
    return f"done, {len(losses)} loss points, final test acc {snap.summary['final_test_acc']:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--steps", type=int, default=20, help="steps watched for host syncs")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU path checks need one (--device cpu runs what applies here)")
        return 0
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}")
    checks = [("no host sync per step", lambda: check_no_sync(dev, args.steps)
               if dev.type == "cuda" else "skipped (CUDA only)"),
              ("engine run", lambda: check_engine_run(dev))]
    failed = 0
    for label, check in checks:
        try:
            print(f"ok    {label}: {check()}")
        except Exception as e:       # report every check, then fail
            failed += 1
            print(f"FAIL  {label}: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
