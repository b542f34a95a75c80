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

With ``--http`` the class is real sessions on the real app instead (:func:`http_class`):
``streamlit run app.py`` on a fresh data folder, one session per student opening the Lab and
pressing Train, while ``/_stcore/health`` and the page (``GET /``) are timed every ~100 ms. A
session is a Chromium context (``--driver chromium``, the default) or one websocket speaking the
browser's own protocol (``--driver ws``, ``bench/ws_session.py``): 30 browsers do not fit beside
the server on 2 cores, 30 websockets do. With ws it also prints the reruns per second the server
answered (full and fragment) and whether each session saw its own run to the end.

Usage: python bench/classroom.py [--sessions 8] [--epochs 100] [--serve processes|threads]
                                 [--workers N] [--slots S] [--batching on|off|both]
                                 [--http [--driver chromium|ws] [--spread S]]
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
    assert eng.wait(rid) == "done", eng.snapshot(rid).error
    return time.perf_counter() - t


def classroom(eng, cfg, n: int) -> dict:
    from kdengine import Metrics
    from kdengine.core.progress import track
    first: dict[int, float] = {}
    submitted: dict[int, float] = {}
    ids: dict[int, str] = {}
    start = threading.Barrier(n)

    def session(i: int):
        start.wait()
        submitted[i] = time.perf_counter()
        rid = ids[i] = eng.submit(cfg, owner=f"student-{i:02d}", name=f"student {i}")

        def on_event(ev):
            if isinstance(ev, Metrics) and "loss/total" in ev.values and i not in first:
                first[i] = time.perf_counter()
        eng.subscribe(rid, on_event)
        if "loss/total" in eng.snapshot(rid).latest and i not in first:
            first[i] = time.perf_counter()          # it was already there when we looked

    health: list[float] = []
    done = threading.Event()

    def poll():      # what the pages do about once a second each, here much more often
        while not done.is_set():
            if ids:
                rid = random.choice(list(ids.values()))
                t = time.perf_counter()
                eng.snapshot(rid)
                eng.runs(owner=eng.snapshot(rid).owner)
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
    statuses = {i: eng.wait(rid) for i, rid in track(ids.items(), "class's runs done", unit="run")}
    total = time.perf_counter() - t0
    server_cpu = time.process_time() - cpu0
    done.set()
    poller.join()
    stored = {i: eng.store.get_run(rid)["status"] for i, rid in ids.items()}
    return {"first": [first[i] - submitted[i] for i in sorted(first)], "total": total, "server_cpu": server_cpu,
            "failed": sum(s != "done" for s in statuses.values()),
            "lost": sum(stored[i] != statuses[i] for i in ids) + (n - len(ids)),
            "no_point": n - len(first), "health": health}


# -- over HTTP: the real app, one browser session per student ---------------------------------------
class Prober(threading.Thread):
    """Times ``GET /_stcore/health`` and ``GET /`` about every ``every`` s until stopped (a probe
    that errors or takes over 10 s counts as an error, not a latency)."""

    def __init__(self, base: str, every: float = 0.1):
        super().__init__(daemon=True)
        self.base, self.every = base, every
        self.times: dict[str, list[float]] = {"/_stcore/health": [], "/": []}
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        import urllib.request
        while not self.halt.is_set():
            tick = time.perf_counter()
            for path, out in self.times.items():
                t = time.perf_counter()
                try:
                    urllib.request.urlopen(self.base + path, timeout=10).read()
                    out.append(time.perf_counter() - t)
                except OSError:
                    self.errors += 1
            self.halt.wait(max(0.0, self.every - (time.perf_counter() - tick)))

    def stop(self) -> "Prober":
        self.halt.set()
        self.join()
        return self


def probe_line(name: str, xs: list[float]) -> str:
    if not xs:
        return f"{name}: no answer"
    return (f"{name}: p50 {statistics.median(xs) * 1e3:.0f} ms, p95 {pct(xs, 0.95) * 1e3:.0f} ms, "
            f"max {max(xs) * 1e3:.0f} ms over {len(xs)} probes")


def cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of process ``root`` and of every process under it (Linux /proc)."""
    tick, procs = os.sysconf("SC_CLK_TCK"), {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()    # fields from the 3rd on: state, ppid, ...
        except OSError:                                      # it ended meanwhile
            continue
        procs[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    tree, grew = {root}, True
    while grew:
        more = {p for p, (pp, _) in procs.items() if pp in tree} - tree
        tree, grew = tree | more, bool(more)
    return {p: procs[p][1] for p in tree if p in procs}


def cpu_split(server: int, before: dict, after: dict) -> str:
    """Where the CPU went between two ``cpu_seconds(os.getpid())`` looks: the app server's own
    process, its training workers, and the rest (the browsers or websocket sessions, and this
    bench)."""
    used = {p: after[p] - before.get(p, 0.0) for p in after}
    workers = sum(used[p] for p in cpu_seconds(server) if p != server and p in used)
    main = used.get(server, 0.0)
    return (f"server process {main:.1f} s, its workers {workers:.1f} s, sessions and bench "
            f"{sum(used.values()) - main - workers:.1f} s")


class ChromiumClass:
    """One Chromium context per student (Playwright): the real frontend, at a browser's CPU cost
    on the same machine. The steps ``bench/ws_session.py``'s ``WsClass`` also offers; it counts
    the reruns the pages ask for (the BackMsgs on their websockets) to compare the two."""

    def __init__(self, base: str):
        from collections import Counter
        self.base, self.pages, self.sent = base, [], Counter()

    def __enter__(self) -> "ChromiumClass":
        from playwright.sync_api import sync_playwright
        from ui_latency import ARGS, CHROMIUM
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        return self

    def __exit__(self, *exc) -> None:
        self.browser.close()
        self.pw.stop()

    def open(self, n: int, epochs: int) -> None:
        """N Lab sessions (one browser context each) with the run set up and its teacher cached."""
        for _ in range(n):
            page = self.browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            page.on("websocket", lambda ws: ws.on("framesent", self.count))
            page.goto(f"{self.base}/?train.epochs={epochs}")
            page.get_by_text("This teacher is cached").wait_for(timeout=180_000)
            self.pages.append(page)

    def count(self, payload) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        if isinstance(payload, bytes):
            msg = BackMsg.FromString(payload)
            if msg.WhichOneof("type") == "rerun_script":
                self.sent["fragment" if msg.rerun_script.fragment_id else "full"] += 1

    def press_all(self, spread: float = 0.0) -> None:
        self.window = (time.perf_counter(), self.sent.copy())
        for i, page in enumerate(self.pages):         # N Train clicks, back to back or spread
            if i and spread:
                page.wait_for_timeout(1000 * spread / (len(self.pages) - 1))
            page.get_by_role("button", name="Train").click()

    def finish(self, store, epochs: int) -> list[str]:
        t0, sent0 = self.window
        secs = time.perf_counter() - t0
        self.pages[0].wait_for_timeout(200)     # sync Playwright delivers the frame events now
        sent = self.sent - sent0
        return [f"reruns the pages asked for during the load ({secs:.0f} s): full "
                f"{sent['full'] / secs:.2f}/s, fragment {sent['fragment'] / secs:.2f}/s"]


def wait_class(store, n: int, timeout: float) -> list[dict]:
    """The students' runs once all N are stored and finished (or as they are at ``timeout``)."""
    from kdengine import ACTIVE
    from kdengine.core.progress import bar
    end, runs = time.perf_counter() + timeout, []
    with bar(n, "class's runs done", unit="run") as b:
        while time.perf_counter() < end:
            runs = [r for r in store.list_runs(limit=1000) if r["owner"] != "solo"]
            finished = sum(r["status"] not in ACTIVE for r in runs)
            b.update(max(0, finished - b.n))
            if len(runs) == n and finished == n:
                break
            time.sleep(0.5)
    return runs


def make_driver(name: str, base: str):
    if name == "ws":
        from ws_session import WsClass
        return WsClass(base)
    return ChromiumClass(base)


def http_class(args) -> None:
    """Cache the Lab's teacher, start the app, open N Lab sessions (Chromium, or websocket sessions
    speaking the browser's protocol), press Train in each, and time the app's health check and page
    while the runs train, until all are done."""
    from ui_latency import free_port, start_server
    from kdengine import Engine, Store
    root = os.environ["KD_RUNS_DIR"]
    eng = Engine(store=Store(root), max_workers=1)
    try:
        solo_time(eng, config(args.epochs))          # trains and caches the Lab's teacher
    finally:
        eng.shutdown()
    if args.serve:
        os.environ["KD_SERVE"] = args.serve
    port = free_port()
    proc, _ = start_server(root, port)
    base = f"http://localhost:{port}"
    try:
        idle = Prober(base)
        idle.start()
        time.sleep(5)
        idle.stop()
        with make_driver(args.driver, base) as students:
            students.open(args.sessions, args.epochs)
            load, cpu0, t0 = Prober(base), cpu_seconds(os.getpid()), time.perf_counter()
            load.start()
            students.press_all(args.spread)
            runs = wait_class(Store(root), args.sessions, args.timeout)
            total, cpu = time.perf_counter() - t0, cpu_split(proc.pid, cpu0, cpu_seconds(os.getpid()))
            load.stop()
            seen = students.finish(Store(root), args.epochs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    what = {"chromium": "Chromium sessions", "ws": "websocket sessions speaking the browser's "
            "protocol (bench/ws_session.py)"}[args.driver]
    print(f"HTTP, driver {args.driver}: {args.sessions} {what} on one `streamlit run app.py` "
          f"(KD_SERVE={os.environ.get('KD_SERVE', 'processes')}); {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f} at the end (the sessions run on the same machine)")
    print(f"{args.epochs}-epoch digits Hinton runs, teacher cached, Train pressed "
          + (f"over {args.spread:.0f} s" if args.spread else "at once") + f": all done in {total:.1f} s")
    print(f"CPU time during the load: {cpu}")
    for when, pr in (("idle, before", idle), ("during the load", load)):
        print(f"{when}: " + "; ".join(probe_line(f"GET {path}", xs) for path, xs in pr.times.items())
              + f"; {pr.errors} errors")
    for line in seen:
        print(line)
    right = sum(r["config"]["train"]["epochs"] == args.epochs for r in runs)
    print(f"failed {sum(r['status'] != 'done' for r in runs)}, "
          f"lost {args.sessions - len(runs)} (Train pressed, no run stored); {right}/{len(runs)} runs "
          f"with {args.epochs} epochs, {len({r['owner'] for r in runs})} distinct owners")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--serve", choices=["processes", "threads"], default=None)
    ap.add_argument("--workers", type=int, default=0, help="executors (default: sized)")
    ap.add_argument("--slots", type=int, default=0, help="time-sliced runs per executor")
    ap.add_argument("--http", action="store_true",
                    help="real browser sessions on `streamlit run app.py`; time its health check")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="with --http: press Train over this many seconds, evenly (default 0: all "
                         "at once, as the API class does); a class pressing over a minute or so "
                         "keeps the server under load for longer and forms smaller cohorts")
    ap.add_argument("--driver", choices=["chromium", "ws"], default="chromium",
                    help="with --http: a Chromium per student, or one websocket each speaking the "
                         "browser's protocol (bench/ws_session.py: light enough for 30 on 2 cores)")
    ap.add_argument("--timeout", type=float, default=900, help="with --http: give up after (s)")
    ap.add_argument("--batching", choices=["on", "off", "both"], default="both",
                    help="cohorts of stacked students (KD_BATCH_WINDOW, default 0.3 s)")
    args = ap.parse_args()
    os.environ.setdefault("KD_RUNS_DIR", tempfile.mkdtemp(prefix="kd_class_"))
    import torch
    torch.set_num_threads(1)
    if args.http:
        return http_class(args)
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
