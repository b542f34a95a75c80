"""Search vs grid at the same budget: ``python bench/search.py [--epochs 12] [--seeds 3]``.

The few-label digits setting (preset digits-50-labels: 50 labels, Hinton KD from an MLP 2x256
teacher) with a 20% validation split. Per seed (the students' init seed and the sampler's seed):

* grid: the 16 cells T in {1, 2, 4, 8} x soft_weight in {0.25, 0.5, 0.75, 1.0}, every cell trained
  to the end; the best cell is picked on val_acc;
* search: 16 TPE trials over the same box (T on a log scale) with ASHA pruning: its epochs against
  the grid's 16 x epochs;
* search @ grid time: the same search with the grid's wall time as its time budget and no trial
  budget to speak of (64): the accuracy it finds at equal wall time.

The best trial is picked on val_acc.

For each: best val_acc, the test accuracy of that config (never used to pick it), wall time and
the epochs trained. Goal: search >= grid on average, with <= 50% of the grid's epochs.

``--stacked`` adds a fourth arm: 16 TPE trials on the vectorised backend, two batches of 8
suggestions each trained as stacked students in one pass, pruned like the search arm (a pruned
member leaves the pass). One worker, one thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

GRID = {"method.params.T": [1.0, 2.0, 4.0, 8.0],
        "method.params.soft_weight": [0.25, 0.5, 0.75, 1.0]}
SPACE = {"method.params.T": {"low": 1.0, "high": 8.0, "log": True},
         "method.params.soft_weight": {"low": 0.25, "high": 1.0}}


def base_config(epochs: int, seed: int):
    from kdengine import load_config
    return load_config("digits-50-labels", [f"train.epochs={epochs}", f"train.seed={seed}",
                                            "train.baseline=false", "data.val_fraction=0.2"])


def run_grid(engine, cfg, backend: str = "local") -> dict:
    from kdengine import SweepSpec, start_sweep
    t0 = time.perf_counter()
    sw = start_sweep(engine, SweepSpec(base=cfg.to_dict(), axes=dict(GRID), backend=backend,
                                       name=f"bench grid {backend}"))
    assert sw.wait(3600) == "done", sw.error
    wall = time.perf_counter() - t0
    rows = sw.rows()
    best = max(rows, key=lambda r: r.get("final_val_acc", -1.0))
    return {"wall": wall, "epochs": len(rows) * cfg.train.epochs, "val": best.get("final_val_acc"),
            "test": best.get("final_test_acc"), "reused": any(r["reused"] for r in rows)}


def run_search(engine, cfg, seed: int, budget_s: float, pruner: str, backend: str = "local",
               trials: int = 16) -> dict:
    from kdengine import SearchSpec, best_trial, start_search
    t0 = time.perf_counter()
    spec = SearchSpec(base=cfg.to_dict(), space=dict(SPACE), n_trials=trials, timeout_s=budget_s,
                      pruner=pruner, seed=seed, backend=backend, name=f"bench search {backend}")
    se = start_search(engine, spec)
    assert se.wait(3600) == "done", se.error
    wall = time.perf_counter() - t0
    rows = se.rows()
    best = best_trial(rows, se.spec)
    test = engine.store.get_run(best["run_id"])["summary"]["final_test_acc"]
    assert not any(r["state"] == "reused" for r in rows), "a trial reused another arm's run"
    return {"wall": wall, "epochs": se.epochs_used(), "val": best["value"], "test": test,
            "trials": len(rows), "pruned": sum(r["state"] == "pruned" for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pruner", default="asha", choices=("asha", "median"))
    ap.add_argument("--stacked", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd-bench-search-"))
    torch.set_num_threads(1)
    from kdengine import Engine, Store
    from kdengine.core.progress import bar, say
    engine = Engine(Store(), max_workers=1)
    warm = base_config(1, 999)          # trains and caches the teacher outside the timings
    engine.wait(engine.submit(warm), timeout=600)
    print(f"digits-50-labels, {args.epochs} epochs per run, 16 grid cells vs 16 TPE trials "
          f"({args.pruner}), one worker\n")
    head = f"{'seed':>4} {'arm':<8} {'best val':>8} {'its test':>8} {'wall s':>7} {'epochs':>6}  notes"
    print(head)
    print("-" * len(head))
    out = {"grid": [], "search": [], "timed": [], "stacked": []}
    arms = bar(args.seeds * (4 if args.stacked else 3), "arms (grid, search, timed)", unit="arm")
    for seed in range(args.seeds):
        cfg = base_config(args.epochs, seed)
        g = run_grid(engine, cfg)
        arms.update()
        s = run_search(engine, cfg, seed, budget_s=g["wall"], pruner=args.pruner)
        arms.update()
        # another sampler seed: the same one would suggest (and reuse) the search arm's trials
        t = run_search(engine, cfg, seed + 50, budget_s=g["wall"], pruner=args.pruner, trials=64)
        arms.update()
        out["grid"].append(g)
        out["search"].append(s)
        out["timed"].append(t)
        for arm, r, note in (("grid", g, ""),
                             ("search", s, f"{s['trials']} trials, {s['pruned']} pruned"),
                             ("timed", t, f"{t['trials']} trials, {t['pruned']} pruned, "
                                          f"grid's wall time as budget")):
            say(f"{seed:>4} {arm:<8} {r['val']:>8.4f} {r['test']:>8.4f} {r['wall']:>7.1f} "
                f"{r['epochs']:>6}  {note}")
        if args.stacked:
            v = run_search(engine, cfg, seed + 100, budget_s=g["wall"], pruner=args.pruner,
                           backend="vectorised")
            out["stacked"].append(v)
            arms.update()
            say(f"{seed:>4} {'stacked':<8} {v['val']:>8.4f} {v['test']:>8.4f} {v['wall']:>7.1f} "
                f"{v['epochs']:>6}  {v['trials']} trials in stacked batches of 8, "
                f"{v['pruned']} pruned")
    arms.close()
    engine.shutdown()
    mean = lambda arm, k: statistics.mean(r[k] for r in out[arm])  # noqa: E731
    print("\nmean over seeds")
    for arm in ("grid", "search", "timed"):
        print(f"  {arm:<8} val {mean(arm, 'val'):.4f}  test {mean(arm, 'test'):.4f}  "
              f"wall {mean(arm, 'wall'):6.1f} s  epochs {mean(arm, 'epochs'):6.1f}")
    if out["stacked"]:
        print(f"  stacked  val {mean('stacked', 'val'):.4f}  test {mean('stacked', 'test'):.4f}  "
              f"wall {mean('stacked', 'wall'):6.1f} s  epochs {mean('stacked', 'epochs'):6.1f}")
    ratio = mean("search", "epochs") / mean("grid", "epochs")
    ok_acc = mean("timed", "val") >= mean("grid", "val")
    print(f"\ngoal: at the grid's wall time, search val >= grid val: {'yes' if ok_acc else 'no'} "
          f"({mean('timed', 'val') - mean('grid', 'val'):+.4f}); 16-trial search "
          f"epochs {ratio:.0%} of the grid's (goal <= 50%): {'yes' if ratio <= 0.5 else 'no'}")


if __name__ == "__main__":
    main()
