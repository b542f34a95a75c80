"""Server CPU of one rerun of the Lab's live view (the fragment a watching student reruns about once
a second), while a run trains and while nothing changes.

    python bench/live_view.py [--reruns 40] [--profile]

Runs the Lab in Streamlit's AppTest on a fresh data folder with the single-process engine, presses
Train on a long digits run, and times the live fragment's body over ``--reruns`` page reruns with
``time.thread_time`` (the script thread's own CPU: training threads and the load from other jobs do
not count). Two cases: the run training (new points between reruns) and the run paused (nothing
changes). ``--profile`` prints the top functions of the training case (cProfile, cumulative).
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_fragments(times: list[float], profiler: list[cProfile.Profile | None]):
    """Wrap ``ui.live.live_fragment`` so each call of the page's render is timed (thread CPU), and
    profiled while ``profiler[0]`` is set."""
    import ui.live
    original = ui.live.live_fragment

    def live_fragment(render, *a, **kw):
        @functools.wraps(render)
        def timed(*args):
            if profiler[0]:
                profiler[0].enable()
            t0 = time.thread_time()
            render(*args)
            times.append(time.thread_time() - t0)
            if profiler[0]:
                profiler[0].disable()
        return original(timed, *a, **kw)
    ui.live.live_fragment = live_fragment


def measure(at, times: list[float], reruns: int, wait: float, what: str) -> list[float]:
    from kdengine.core.progress import track
    del times[:]
    for _ in track(range(reruns), what):
        at.run()
        time.sleep(wait)
    return [t * 1000 for t in times]


def report(name: str, ms: list[float]) -> None:
    print(f"{name:<28} median {statistics.median(ms):6.1f} ms CPU, mean {statistics.mean(ms):6.1f}, "
          f"max {max(ms):6.1f} (n={len(ms)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=40)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    os.environ["KD_RUNS_DIR"] = tempfile.mkdtemp(prefix="kd_live_view_")
    os.environ["KD_SERVE"], os.environ["KD_MAX_WORKERS"] = "threads", "1"
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(1)
    from streamlit.testing.v1 import AppTest

    times: list[float] = []
    profiler: list[cProfile.Profile | None] = [None]
    timed_fragments(times, profiler)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["preset"] = "digits-quick"
    at.run()
    at.number_input(key="lab.train.epochs").set_value(400).run()
    at.button(key="lab_train").click().run()
    from ui.engine import get_engine
    engine, rid = get_engine(), at.session_state["lab_run"]
    deadline = time.time() + 300
    while len(engine.snapshot(rid).series.get("test_acc", [])) < 20 and time.time() < deadline:
        time.sleep(0.5)
    at.run()
    profiler[0] = cProfile.Profile() if args.profile else None
    report("training", measure(at, times, args.reruns, 0.2, "reruns, training"))
    if profiler[0]:
        stats = pstats.Stats(profiler[0]).sort_stats("cumulative")
        stats.print_stats(20)
        stats.print_stats(str(ROOT), 25)         # this repository's own functions
        profiler[0] = None
    engine.pause(rid)
    time.sleep(1.0)
    report("paused (nothing changes)", measure(at, times, args.reruns, 0.0, "reruns, paused"))
    engine.stop(rid)
    print(f"points per metric: {len(engine.snapshot(rid).series.get('test_acc', []))}")
    engine.shutdown()


if __name__ == "__main__":
    main()
