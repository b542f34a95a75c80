"""What a user waits for in the web app, measured in a real browser (Playwright + Chromium).

    python bench/ui_latency.py [--runs-dir DIR] [--clicks 9] [--json out.json]

Trains the runs it needs into a fresh data folder (or reuses ``--runs-dir``), starts
``streamlit run app.py`` on a free port and prints:

* first page load: a fresh server, from ``page.goto`` to the Lab's Train button being drawn
  (and, apart, the server's own start-up to its health check);
* input -> repaint for the Soft targets T slider, the Boundaries epoch replay and the Dark
  knowledge bias shift: from the mouse press on the slider to the first animation frame after
  Plotly has drawn the new frame (all in the browser: ``performance.now()``);
* Train -> first live point, with the teacher cached and the "student alone" baseline not
  (a new epoch count each time): from the click to the first point in a live chart.

Goals: slider -> repaint median <= 100 ms; Train -> first live point
<= 2 s with a cached teacher; first page load <= 3 s. Timings depend on the machine and on what
else runs on it: report them with the CPU count and load.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]

# Resolves with the ms from the next mouse press to the frame after Plotly's next animation.
ARM = """(sel) => { const gd = document.querySelector(sel + ' .js-plotly-plot');
  window.__lat = new Promise(resolve => {
    let t0 = null;
    document.addEventListener('mousedown', () => { t0 = performance.now(); },
                              {capture: true, once: true});
    const done = () => { gd.removeListener('plotly_animated', done);
                         requestAnimationFrame(() => resolve(performance.now() - t0)); };
    gd.on('plotly_animated', done);
  }); }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_runs(root: str) -> dict[str, str]:
    """The runs the pages show: a digits KD run (its teacher is then cached), an omitted-class
    run and a moons BSS run with several epochs to replay."""
    os.environ["KD_RUNS_DIR"] = root
    from kdengine import Engine, Store, load_config
    want = {"digits": load_config("digits-quick", ["train.epochs=3"]),
            "omit": load_config("digits-omit-3", ["train.epochs=3"]),
            "moons": load_config("moons-bss", ["train.epochs=10"])}
    eng = Engine(store=Store(root), max_workers=1)
    have = {}
    try:
        for r in eng.list_runs(limit=200):
            for k, cfg in want.items():
                if r.status == "done" and r.config == cfg.to_dict() and k not in have:
                    have[k] = r.run_id
        for k, cfg in want.items():
            if k not in have:
                have[k] = eng.submit(cfg, owner="bench", name=f"bench-{k}")
                assert eng.wait(have[k], timeout=600) == "done", eng.snapshot(have[k]).error
    finally:
        eng.shutdown()
    return have


def start_server(root: str, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "KD_RUNS_DIR": root, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc, time.perf_counter() - t0
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 120:
            raise RuntimeError("streamlit did not start")
        time.sleep(0.05)


def slider_latencies(page, sel: str, clicks: int) -> list[float]:
    """Click along the figure's slider rail; ms from each press to the repainted frame."""
    page.locator(sel + " .js-plotly-plot").wait_for(timeout=180_000)
    page.locator(sel).scroll_into_view_if_needed()
    time.sleep(1.0)
    box = page.locator(sel + " .slider-rail-rect").first.bounding_box()
    out = []
    spots = [0.15 + 0.7 * ((k * 0.37) % 1) for k in range(clicks)]     # spread, never the same
    for f in spots:
        page.evaluate(ARM, sel)
        page.mouse.click(box["x"] + f * box["width"], box["y"] + box["height"] / 2)
        out.append(page.evaluate("window.__lat"))
        time.sleep(0.3)
    return out


def live_points(page) -> int:
    return page.locator(".st-key-lab_acc .scatterlayer .point, "
                        "[class*='st-key-lab_loss_'] .scatterlayer .point").count()


def train_to_first_point(page, base: str) -> float:
    """Open the Lab on digits-quick with a new epoch count (the baseline is not cached, the
    teacher is) and the baseline on; seconds from Train to the first live point."""
    epochs = random.randint(11, 400)
    page.goto(f"{base}/?preset=digits-quick&train.epochs={epochs}&train.baseline=true")
    page.get_by_role("button", name="Train").wait_for(timeout=120_000)
    page.get_by_text("This teacher is cached").wait_for(timeout=60_000)
    time.sleep(1.0)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Train").click()
    shot = False
    while live_points(page) == 0:
        waited = time.perf_counter() - t0
        if waited > 15 and not shot:         # what the user sees meanwhile, for the report
            page.screenshot(path="ui_latency_train_wait.png")
            shot = True
        if waited > 180:
            raise RuntimeError("no live point within 180 s")
        time.sleep(0.05)
    took = time.perf_counter() - t0
    stop = page.get_by_role("button", name="Stop")
    if stop.is_enabled():
        stop.click()
    return took


def pick_run(page, text: str) -> None:
    page.locator(".stSelectbox").first.click()
    page.get_by_role("option").filter(has_text=text).first.click()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", help="a data folder to reuse (default: a new one)")
    ap.add_argument("--clicks", type=int, default=9)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    root = args.runs_dir or tempfile.mkdtemp(prefix="kd_ui_bench_")
    sys.path.insert(0, str(ROOT))
    runs = prepare_runs(root)
    from kdengine.core.progress import bar
    from playwright.sync_api import sync_playwright
    port = free_port()
    proc, server_s = start_server(root, port)
    base = f"http://localhost:{port}"
    res: dict[str, object] = {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0],
                              "server_start_s": server_s}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            t0 = time.perf_counter()
            page.goto(base)
            page.get_by_role("heading", name="Lab").first.wait_for(timeout=120_000)
            res["first_page_load_s"] = time.perf_counter() - t0
            page.get_by_role("button", name="Train").wait_for(timeout=120_000)
            res["first_page_train_ready_s"] = time.perf_counter() - t0

            sections = bar(4, "measurements", unit="section")

            def section(name: str, fn) -> None:
                sections.set_description(name)
                try:
                    res[name] = fn()
                except Exception as e:      # report the others anyway
                    res[name] = f"failed: {type(e).__name__}: {e}"
                    page.screenshot(path=f"ui_latency_{name}.png")
                sections.update()

            def soft_targets():
                page.goto(f"{base}/soft_targets?run={runs['digits']}&i=3&T=4.0")
                return slider_latencies(page, ".st-key-st_bars", args.clicks)

            def dark_knowledge():
                page.goto(f"{base}/dark_knowledge")
                return slider_latencies(page, ".st-key-dk_view", args.clicks)

            def boundaries():
                page.goto(f"{base}/boundaries")
                page.locator(".stSelectbox").first.wait_for(timeout=120_000)
                pick_run(page, "moons")
                return slider_latencies(page, ".st-key-bd_heatmap", args.clicks)

            section("T_slider_ms", soft_targets)
            section("bias_shift_ms", dark_knowledge)
            section("epoch_replay_ms", boundaries)
            section("train_to_first_point_s",
                    lambda: [train_to_first_point(page, base) for _ in range(2)])
            sections.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res["load_1min_after"] = os.getloadavg()[0]
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def report(res: dict) -> None:
    def med(key: str, fmt: str) -> str:
        v = res.get(key)
        if isinstance(v, list):
            v = statistics.median(v)
        return fmt.format(v) if isinstance(v, (int, float)) else str(v)
    rows = [("first page drawn (fresh server)", med("first_page_load_s", "{:.2f} s"), "<= 3 s"),
            ("  ... its Train button ready", med("first_page_train_ready_s", "{:.2f} s"), ""),
            ("  server start to health check", med("server_start_s", "{:.2f} s"), ""),
            ("T slider -> repaint (median)", med("T_slider_ms", "{:.0f} ms"), "<= 100 ms"),
            ("epoch replay -> repaint (median)", med("epoch_replay_ms", "{:.0f} ms"), "<= 100 ms"),
            ("bias shift -> repaint (median)", med("bias_shift_ms", "{:.0f} ms"), "<= 100 ms"),
            ("Train -> first live point (teacher cached, baseline not; median)",
             med("train_to_first_point_s", "{:.2f} s"), "<= 2 s")]
    print(f"{res['cpus']} CPUs, 1-min load {res['load_1min']:.1f} before, "
          f"{res.get('load_1min_after', float('nan')):.1f} after")
    w = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{w}}  {value:>10}  {goal}")
    for k in ("T_slider_ms", "epoch_replay_ms", "bias_shift_ms", "train_to_first_point_s"):
        if isinstance(res.get(k), list):
            print(f"{k}: " + " ".join(f"{v:.3g}" for v in res[k]))


if __name__ == "__main__":
    if not Path(CHROMIUM).exists():
        sys.exit(f"needs Chromium at {CHROMIUM}")
    main()
