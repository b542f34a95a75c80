"""The phenomena suite: every lesson's claim measured over seeds on a CPU, as a markdown table.

Claims and measurements live in kdengine/experiments/phenomena.py; this script only runs and prints.
A claim reproduces when its mean effect clears the threshold by more than one sd over the seeds.
Each claim's time is printed as CPU seconds (what the 2-minute goal is judged on: it does not grow
with other jobs on a shared machine) and wall seconds.
Usage: python bench/phenomena.py [--seeds 3] [--claims few_labels,dkd_identity]
Runs and teachers go to a temporary folder (KD_RUNS_DIR, unless already set).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_tmp = tempfile.mkdtemp(prefix="kd_phenomena_")
os.environ.setdefault("KD_RUNS_DIR", _tmp)

import torch
from tqdm import tqdm

from kdengine.experiments.phenomena import CLAIMS, cpu_seconds, markdown_table, run_claims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--claims", default="", help="comma-separated claim ids (default: all)")
    args = ap.parse_args()
    wanted = [c for c in args.claims.split(",") if c]
    unknown = set(wanted) - {c.id for c in CLAIMS}
    if unknown:
        sys.exit(f"unknown claims: {', '.join(sorted(unknown))}; known: "
                 f"{', '.join(c.id for c in CLAIMS)}")
    claims = [c for c in CLAIMS if not wanted or c.id in wanted]
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    t0, c0 = time.perf_counter(), cpu_seconds()
    # The bar goes to stderr and only to a terminal: piped or logged runs print the table alone.
    bar = tqdm(total=len(claims) * len(seeds), unit="run", disable=not sys.stderr.isatty())

    def step(claim_id: str, seed: int) -> None:
        bar.set_description(f"{claim_id} seed {seed}")
        bar.update()
    def done(r) -> None:
        # one line per finished claim (stderr), so a long run shows its results as they come
        bar.write(f"{r.claim.id}: {r.mean:+.4g} ± {r.sd:.3g} {r.claim.unit} "
                  f"({'reproduced' if r.reproduced else 'not reproduced'}; per seed "
                  f"{', '.join(f'{v:.4g}' for v in r.values)}; {r.cpu_seconds:.0f} s CPU, "
                  f"{r.seconds:.0f} s wall)", file=sys.stderr)
    results = run_claims(claims, seeds, step, done)
    bar.close()
    print(markdown_table(results))
    n_ok = sum(r.reproduced for r in results)
    n_fast = sum(r.cpu_seconds < 120 for r in results)
    print(f"\n{n_ok} of {len(results)} claims reproduced, {n_fast} within 2 CPU minutes; seeds "
          f"{seeds[0]}-{seeds[-1]}; {cpu_seconds() - c0:.0f} CPU s, {time.perf_counter() - t0:.0f} "
          f"wall s in all (torch {torch.__version__}, 1 thread; load {os.getloadavg()[0]:.1f}).")


if __name__ == "__main__":
    main()
