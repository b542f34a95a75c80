"""Browser test: `streamlit run app.py` on a free port, driven by Playwright with Debian's chromium.

Opens the Lab, loads the fastest preset, presses Train, sees the accuracy chart gain points, opens
Soft targets, moves T and sees the bars change. Screenshots of each page go to tests/artifacts/
(git-ignored), with the measured times in tests/artifacts/e2e_timings.json.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from support import app_server, choose_option

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

EPOCHS = 1000          # long enough to pause and stop mid-run on a slow, shared machine

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def server():
    # the session's data folder: a cached teacher is reused
    with app_server(ARTIFACTS / "streamlit.log", {"KD_RUNS_DIR": os.environ["KD_RUNS_DIR"]}) as url:
        yield url


def points(page, key: str) -> int:
    """Plotly markers drawn in the chart container with this Streamlit key."""
    return page.locator(f".st-key-{key} .scatterlayer .point").count()


def wait_until(fn, timeout: float, what: str, poll: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def href(page) -> str:
    return page.evaluate("() => window.location.href")   # page.url can lag replaceState


def idle(page, timeout: float = 60) -> None:
    """Wait until no script run is in progress (Streamlit's "Running…" widget gone for 0.5 s)."""
    running = page.locator('[data-testid="stStatusWidget"]')
    quiet_since = [None]

    def quiet():
        if running.count():
            quiet_since[0] = None
            return False
        quiet_since[0] = quiet_since[0] or time.monotonic()
        return time.monotonic() - quiet_since[0] > 0.5
    wait_until(quiet, timeout, "the app to be idle")


def bar_shapes(page) -> list[str]:
    """The soft-target bars (the figure's first subplot; the ranking below has bars too)."""
    return page.locator(".st-key-st_bars .subplot.xy .barlayer .point path").evaluate_all(
        "els => els.map(e => e.getAttribute('d'))")


class SentFrames:
    """Counts the messages the page sends to the Streamlit server (a rerun is one): a control
    that redraws in the browser sends none."""

    def __init__(self, page):
        self.n = 0
        page.on("websocket", lambda ws: ws.on("framesent", self._sent))

    def _sent(self, _payload) -> None:
        self.n += 1


def click_slider(page, container: str, frac: float) -> None:
    """Press a Plotly figure's own slider at ``frac`` of its rail."""
    rail = page.locator(f"{container} .slider-rail-rect").first
    rail.scroll_into_view_if_needed()
    box = rail.bounding_box()
    page.mouse.click(box["x"] + frac * box["width"], box["y"] + box["height"] / 2)


def status_text(page) -> str:
    loc = page.get_by_text(re.compile(r"· status "))
    return loc.first.inner_text() if loc.count() else ""


def train_and_time(page) -> float:
    """Press Train; seconds until the first live loss point is drawn."""
    before = points(page, "lab_loss_kd")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Train").click()
    wait_until(lambda: points(page, "lab_loss_kd") > 0 and "running" in status_text(page)
               or "done" in status_text(page) and points(page, "lab_loss_kd") != before,
               120, "the first live point")
    return time.perf_counter() - t0


def test_browser_lab_train_live_and_soft_targets(server):
    from playwright.sync_api import sync_playwright
    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1900})
            sent = SentFrames(page)
            page.goto(server)
            page.get_by_role("button", name="Train").wait_for(timeout=120_000)
            idle(page)

            # The fastest preset, with enough epochs to watch the chart grow.
            choose_option(page, "lab_preset", re.compile(r"^digits-quick"))
            idle(page)
            page.get_by_role("button", name="Load preset").click()
            epochs = page.locator(".st-key-lab-train-epochs input")
            wait_until(lambda: epochs.input_value() == "3", 60, "the preset's epochs")
            idle(page)
            page.get_by_role("tab", name="Training").click()        # the setup's tabs
            epochs.fill(str(EPOCHS))
            epochs.press("Enter")
            wait_until(lambda: f"train.epochs={EPOCHS}" in href(page), 60, "the setup in the URL")
            idle(page)

            timings["teacher_cached_before_first_run"] = \
                page.get_by_text("This teacher is cached").count() > 0
            timings["train_to_first_point_s"] = train_and_time(page)  # may include the teacher
            wait_until(lambda: points(page, "lab_acc") > 0, 120, "the first accuracy point")
            page.get_by_role("button", name="Pause").click()
            wait_until(lambda: "paused" in status_text(page), 60, "the run to pause")
            paused_at = points(page, "lab_acc")
            page.get_by_role("button", name="Resume").click()
            wait_until(lambda: points(page, "lab_acc") > paused_at, 120,
                       "the accuracy chart to gain points")
            page.get_by_role("button", name="Stop").click()
            wait_until(lambda: re.search(r"status (stopped|done)", status_text(page)), 60,
                       "the run to stop")
            timings["acc_points_paused_then_later"] = [paused_at, points(page, "lab_acc")]

            # Again with the teacher now cached: the wait a user sees on every later run.
            timings["train_to_first_point_warm_s"] = train_and_time(page)
            wait_until(lambda: points(page, "lab_acc") > 0, 120, "the second run's first epoch")
            page.get_by_role("button", name="Stop").click()
            wait_until(lambda: re.search(r"status (stopped|done)", status_text(page)), 60,
                       "the second run to stop")
            idle(page)
            page.screenshot(path=str(ARTIFACTS / "lab.png"), full_page=True)

            page.get_by_role("link", name="Soft targets").click()
            page.locator(".st-key-st_bars .barlayer .point").first.wait_for(timeout=120_000)
            idle(page)
            before = bar_shapes(page)
            assert len(before) == 20                                   # 10 classes x 2 models
            # The T slider is the figure's own: the bars change without a message to the server.
            n0 = sent.n
            click_slider(page, ".st-key-st_bars", 0.8)
            wait_until(lambda: bar_shapes(page) != before and len(bar_shapes(page)) == 20, 60,
                       "the bars to change with T")
            time.sleep(1.0)
            assert sent.n == n0, "moving T made a server rerun"
            page.screenshot(path=str(ARTIFACTS / "soft_targets.png"), full_page=True)

            page.get_by_role("link", name="Runs").click()
            page.locator(".st-key-runs_overlay .point").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "runs.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            print("url at failure:", page.url)
            raise
        finally:
            browser.close()
    (ARTIFACTS / "e2e_timings.json").write_text(json.dumps(timings, indent=1))
    print(timings)
