"""Config fuzzing at full strength: 1000 hypothesis examples per entry point.

    python bench/fuzz.py [--examples 1000] [--only field,yaml]

Runs the same properties as ``tests/test_reliability_config.py`` (which uses 200 per entry point in
CI) and prints, per entry point, how many inputs were tried, how many gave a valid config and how
many a ConfigError naming the field. Any other outcome (a traceback, an accepted bad value, an error
naming no field) stops the run with hypothesis's shrunk counterexample and exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_fuzz_"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--only", default="", help="comma-separated entry points")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))       # run as a script: the repository's tests/ and kdengine/
    from kdengine.core.progress import say, track
    from tests.test_reliability_config import ENTRY_POINTS, run_entry
    names = [n for n in ENTRY_POINTS if not args.only or n in args.only.split(",")]
    print(f"{'entry point':<12} {'tried':>6} {'valid':>6} {'refused':>8} {'other':>6} {'seconds':>8}")
    total = Counter()
    for name in track(names, "entry points"):
        counts: Counter = Counter()
        t0 = time.perf_counter()
        try:
            run_entry(name, args.examples, counts)
        except BaseException as e:  # report which entry point broke, then fail
            say(f"{name:<12} FAILED after {sum(counts.values())} examples: "
                  f"{type(e).__name__}: {str(e)[:2000]}")
            return 1
        tried = sum(counts.values())
        total.update(counts)
        total["tried"] += tried
        say(f"{name:<12} {tried:>6} {counts['valid']:>6} {counts['error']:>8} {0:>6} "
              f"{time.perf_counter() - t0:>8.1f}")
    print(f"{'all':<12} {total['tried']:>6} {total['valid']:>6} {total['error']:>8} {0:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
