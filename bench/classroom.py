"""A class presses Train at once: N sessions submit the Lab's digits Hinton run to one engine.

Uses the API the pages call (``Engine.submit``, ``Engine.snapshot``, ``Engine.runs``), with the
engine a server builds (``kdengine.run.serving``) unless told otherwise, and a cached teacher.
Prints:
  * time to first live point (the first training-loss point) after submit: median, p95, max
  * total time until every run is done, and its ratio to N x solo / cores
  * the engine's response time during the load: snapshot() + runs() latency, polled as pages do
  * failed or lost runs (a run is lost if it is not done in the store when the engine says so)

With ``--batching both`` (the default) the class runs twice, without and with cohorts (runs of
different sessions stacked into one pass, the engine's batch window), each on a fresh engine with
its solo time measured just before (with batching on, a lone run waits out the window too).

Usage: python bench/classroom.py [--sessions 8] [--epochs 100] [--serve processes|threads]
                                 [--workers N] [--slots S] [--batching on|off|both]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time


def config(epochs: int):
    from kdengine import RunConfig
    return RunConfig().with_overrides({"train.epochs": epochs})     # the Lab's defaults


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def make_engine(args, window: float):
    from kdengine import Engine, Store
    from kdengine.run.serving import serving_options
    if args.serve:
        os.environ["KD_SERVE"] = args.serve
    opts = serving_options()
    if args.workers:
        opts["max_workers"] = args.workers
    if args.slots:          # with threads: time-sliced runs in this one process
        opts["slots"] = args.slots
    opts["batch_window_s"] = window
    return Engine(store=Store(os.environ["KD_RUNS_DIR"]), **opts), opts


def solo_time(eng, cfg) -> float:
    t = time.perf_counter()
    rid = eng.submit(cfg, owner="solo")
    assert eng.wait(rid) == "done", eng.snapshot(rid)["error"]
    return time.perf_counter() - t


def classroom(eng, cfg, n: int) -> dict:
    first: dict[int, float] = {}
    submitted: dict[int, float] = {}
    ids: dict[int, str] = {}
    start = threading.Barrier(n)

    def session(i: int):
        start.wait()
        submitted[i] = time.perf_counter()
        rid = ids[i] = eng.submit(cfg, owner=f"student-{i:02d}", name=f"student {i}")

        def on_event(ev):
            if ev["type"] == "metrics" and "loss/total" in ev["values"] and i not in first:
                first[i] = time.perf_counter()
        eng.subscribe(rid, on_event)
        if "loss/total" in eng.snapshot(rid)["latest"] and i not in first:
            first[i] = time.perf_counter()          # it was already there when we looked

    health: list[float] = []
    done = threading.Event()

    def poll():      # what the pages do about once a second each, here much more often
        while not done.is_set():
            if ids:
                rid = random.choice(list(ids.values()))
                t = time.perf_counter()
                eng.snapshot(rid)
                eng.runs(owner=eng.snapshot(rid)["owner"])
                health.append(time.perf_counter() - t)
            time.sleep(0.05)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = {i: eng.wait(rid) for i, rid in ids.items()}
    total = time.perf_counter() - t0
    server_cpu = time.process_time() - cpu0
    done.set()
    poller.join()
    stored = {i: eng.store.get_run(rid)["status"] for i, rid in ids.items()}
    return {"first": [first[i] - submitted[i] for i in sorted(first)], "total": total, "server_cpu": server_cpu,
            "failed": sum(s != "done" for s in statuses.values()),
            "lost": sum(stored[i] != statuses[i] for i in ids) + (n - len(ids)),
            "no_point": n - len(first), "health": health}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--serve", choices=["processes", "threads"], default=None)
    ap.add_argument("--workers", type=int, default=0, help="executors (default: sized)")
    ap.add_argument("--slots", type=int, default=0, help="time-sliced runs per executor")
    ap.add_argument("--batching", choices=["on", "off", "both"], default="both",
                    help="cohorts of stacked students (KD_BATCH_WINDOW, default 0.3 s)")
    args = ap.parse_args()
    os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_class_"))
    import torch
    torch.set_num_threads(1)
    from kdengine.run.serving import batch_window, usable_cores
    cfg = config(args.epochs)
    cores = usable_cores()
    modes = {"off": [0.0], "on": [batch_window() or 0.3], "both": [0.0, batch_window() or 0.3]}
    for window in modes[args.batching]:
        eng, opts = make_engine(args, window)
        try:
            eng.wait_ready(300)                   # a server's workers warm up before the class
            solo_time(eng, cfg)                   # trains and caches the teacher; warms workers
            # timed again for each engine, just before its class: the machine's load drifts
            solo = statistics.median(solo_time(eng, cfg) for _ in range(2))
            report(args, opts, cores, solo, classroom(eng, cfg, args.sessions))
        finally:
            eng.shutdown()


def report(args, opts: dict, cores: int, solo: float, r: dict) -> None:
    fp, h = r["first"], r["health"]
    ideal = args.sessions * solo / cores
    print(f"engine: {opts or 'threads (KD_MAX_WORKERS)'}; {cores} cores; load average "
          f"{os.getloadavg()[0]:.1f} at the end (other work on the machine counts)")
    print(f"sessions {args.sessions} x {args.epochs}-epoch digits Hinton runs; solo run "
          f"{solo:.2f} s")
    if fp:
        print(f"first live point after submit: median {statistics.median(fp):.2f} s, "
              f"p95 {pct(fp, 0.95):.2f} s, max {max(fp):.2f} s")
    print(f"all done in {r['total']:.1f} s = {r['total'] / ideal:.2f} x (N x solo / cores = "
          f"{ideal:.1f} s)")
    if h:
        print(f"engine response (snapshot + runs) during the load: median "
              f"{statistics.median(h) * 1e3:.1f} ms, p95 {pct(h, 0.95) * 1e3:.1f} ms, "
              f"max {max(h) * 1e3:.1f} ms over {len(h)} polls")
    print(f"CPU time of the engine's own process during the load: {r['server_cpu']:.1f} s")
    print(f"failed {r['failed']}, lost {r['lost']}, without a live point {r['no_point']}\n")


if __name__ == "__main__":
    main()
