"""Browser test: the Boundaries page during a live BSS run on moons redraws the student's heatmap.

Reuses the Streamlit server of tests/test_e2e.py (same module-scoped fixture and helpers).
"""
from __future__ import annotations

import re

import time

from tests.test_e2e import (ARGS, ARTIFACTS, CHROMIUM, SentFrames, click_slider, idle,  # noqa: F401
                            pytestmark, server, wait_until)


def student_epoch(page) -> int:
    """The epoch in the student panel's title ("student, epoch N"), 0 before the first snapshot."""
    text = page.locator(".st-key-bd_heatmap").all_inner_texts()
    m = re.search(r"student, epoch (\d+)", " ".join(text))
    return int(m.group(1)) if m else 0


def test_boundaries_heatmap_follows_a_live_bss_run(server):  # noqa: F811
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1600})
        sent = SentFrames(page)
        try:
            page.goto(f"{server}/boundaries")
            start = page.locator(".st-key-bd_start button").first
            start.wait_for(timeout=120_000)
            idle(page)
            start.click()
            first = wait_until(lambda: student_epoch(page), 180, "the first student heatmap")
            wait_until(lambda: student_epoch(page) > first, 180, "the heatmap to follow training")
            assert page.locator(".st-key-bd_heatmap .main-svg").count() > 0
            page.screenshot(path=str(ARTIFACTS / "boundaries.png"), full_page=True)

            # Once the run ends, the replay slider and the disagreement switch act in the browser.
            wait_until(lambda: page.get_by_text(re.compile(r"^done · epoch")).count(), 300,
                       "the run to finish")
            idle(page)
            last = student_epoch(page)
            n0 = sent.n
            click_slider(page, ".st-key-bd_heatmap", 0.0)
            wait_until(lambda: student_epoch(page) == 1, 30, "the replay to show epoch 1")
            images = page.locator(".st-key-bd_heatmap .imagelayer image")
            shown = images.count()              # the teacher's and the student's regions
            page.get_by_text("disagreement map on").click()
            wait_until(lambda: images.count() == shown + 1 and page.get_by_text(
                re.compile(r"^disagreement: top class differs")).count(), 30, "the disagreement panel")
            time.sleep(1.0)
            assert sent.n == n0 and last > 1, "the replay or the switch made a server rerun"
            page.screenshot(path=str(ARTIFACTS / "boundaries_replay.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure-boundaries.png"), full_page=True)
            raise
        finally:
            browser.close()
