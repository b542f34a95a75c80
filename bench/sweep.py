"""Sweep cost against one run, on digits: ``python bench/sweep.py [--epochs 10] [--workers 1]``.

Prints, from one invocation, on the same 4 x 4 grid (T x soft weight, MLP 1x32 student, teacher from
the digits-quick preset, cached before timing starts):

* (16-cell vectorised sweep time) / (one run time)   — goal <= 3x
* (16-cell local-backend sweep time) / (one run time)
* the vectorised sweep again on an engine with worker processes (``--processes``, as the app serves):
  the server process's CPU time as a share of the sweep's (server + workers): the server only
  submits and records, so its share should be small

Each stage has its own store, so no stage can reuse another's cells. Times are wall clock through the
Engine / Sweep (what a user waits for), including data, evaluation and store writes; the vectorised
sweep's groups go through the engine's queue like any run (Engine.submit_group).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="engine workers for the local backend")
    ap.add_argument("--repeats", type=int, default=3, help="single runs timed (median)")
    ap.add_argument("--processes", action="store_true",
                    help="also run the vectorised sweep on worker processes and report the server's CPU share")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kd-bench-sweep-"))
    os.environ["KD_RUNS_DIR"] = str(root)

    import torch
    torch.set_num_threads(1)
    from kdengine import Engine, Store, SweepSpec, load_config, start_sweep, train
    from kdengine.core.progress import track

    base = load_config("digits-quick", [f"train.epochs={args.epochs}"])
    axes = {"method.params.T": [1.0, 2.0, 4.0, 8.0],
            "method.params.soft_weight": [0.25, 0.5, 0.75, 1.0]}
    train(base)                           # warm-up: data, imports, the cached teacher

    eng = Engine(Store(root / "one"), max_workers=1)
    one: list[float] = []

    def single_runs(n: int) -> None:
        for _ in track(range(n), "single runs"):
            cfg = base.with_overrides({"method.params.T": 3.0 + 0.1 * len(one)})   # never a grid cell
            t = time.perf_counter()
            eng.wait(eng.submit(cfg))
            one.append(time.perf_counter() - t)

    def sweep(backend: str, workers: int, processes: bool = False) -> tuple[float, float, float]:
        """Wall time, this process's CPU time and the workers' CPU time of one sweep."""
        e = Engine(Store(root / f"{backend}-{processes}"), max_workers=workers, processes=processes)
        if processes:
            for x in e._executors:
                x.ready.wait(120)           # imported and warmed up, as on a serving app
        pids = [x.process.pid for x in e._executors] if processes else []
        w0, t, c = worker_cpu(pids), time.perf_counter(), time.process_time()
        sw = start_sweep(e, SweepSpec(base=base.to_dict(), axes=axes, backend=backend))
        status = sw.wait()
        dt, cpu, wcpu = time.perf_counter() - t, time.process_time() - c, worker_cpu(pids) - w0
        e.shutdown()
        assert status == "done", sw.error
        return dt, cpu, wcpu

    # single runs before and after the sweeps: on a shared machine the load drifts
    single_runs(args.repeats)
    t_vec = sweep("vectorised", 1)[0]
    t_local = sweep("local", args.workers)[0]
    procs = sweep("vectorised", 1, processes=True) if args.processes else None
    single_runs(args.repeats)
    eng.shutdown()
    t_one = statistics.median(one)
    print(f"device: cpu, torch {torch.__version__}, {os.cpu_count()} cores, 1 thread per run")
    print(f"grid: 4 x 4 (T x soft weight), digits, student MLP 1x32, {args.epochs} epochs")
    print(f"one run:                 {t_one:7.2f} s (median of {len(one)}, range {min(one):.2f}-{max(one):.2f})")
    print(f"16-cell vectorised sweep:{t_vec:7.2f} s  = {t_vec / t_one:5.2f} x one run (goal <= 3)")
    print(f"16-cell local sweep:     {t_local:7.2f} s  = {t_local / t_one:5.2f} x one run "
          f"({args.workers} worker{'s' if args.workers > 1 else ''})")
    if procs:
        wall, server, workers = procs
        print(f"16-cell vectorised sweep on a worker process: {wall:.2f} s; CPU: server {server:.2f} s, "
              f"worker {workers:.2f} s; server share {server / (server + workers):.1%}")


def worker_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])      # utime, stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
