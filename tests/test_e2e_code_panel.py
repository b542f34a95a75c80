"""Browser test: the Lab's "loss in code" panel in real Chromium shows the chosen method's formula
(typeset) and the code of its ``loss_terms``, and follows the method picker: Hinton KD, then DKD.
A screenshot goes to tests/artifacts/code_panel.png."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import app_server, choose_option
from test_e2e import ARGS, ARTIFACTS, CHROMIUM, idle, wait_until

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (.ci/run installs it)")


def open_panel(page, method: str):
    """The panel's expander for ``method``, opened; returns its code block."""
    header = page.get_by_text(f"The loss in code: {method}", exact=True)
    header.wait_for(timeout=60_000)
    code = page.locator(".st-key-lab_code")
    if not code.is_visible():
        header.click()
    code.wait_for(state="visible", timeout=30_000)
    return code


def test_lab_panel_shows_the_running_code_of_the_chosen_method(tmp_path):
    from playwright.sync_api import sync_playwright
    with app_server(ARTIFACTS / "streamlit_code_panel.log",
                    {"KD_RUNS_DIR": os.environ["KD_RUNS_DIR"]}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        try:
            page.goto(url)
            page.get_by_role("button", name="Train").wait_for(timeout=120_000)
            idle(page)
            code = open_panel(page, "hinton")
            text = code.inner_text()
            assert "def loss_terms" in text and "kd_loss(" in text, text[:400]
            assert page.locator(".katex").count() > 0            # the formula, typeset
            for term in ("kd", "ce"):                              # off until a run trains with it
                assert page.get_by_role("button", name=term, exact=True).is_disabled()

            page.get_by_role("tab", name="Method").click()
            choose_option(page, "lab-method-name", re.compile(r"^dkd"))
            wait_until(lambda: "method.name=dkd" in page.evaluate("() => location.href"), 60,
                       "the method in the URL")
            idle(page)
            code = open_panel(page, "dkd")
            wait_until(lambda: "dkd_terms(" in code.inner_text(), 30, "DKD's code in the panel")
            text = code.inner_text()
            assert "def loss_terms" in text and "kd_loss(" not in text
            page.get_by_role("button", name="tckd", exact=True).wait_for(timeout=30_000)
            idle(page)
            page.screenshot(path=str(ARTIFACTS / "code_panel.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "code_panel_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
