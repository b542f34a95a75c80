"""Browser test: four real browser sessions type their names and press Train at
once on one server (worker processes); each sees only its own run, and all four finish."""
from __future__ import annotations

import os
import re

import pytest

from support import app_server
from tests.test_e2e import ARGS, ARTIFACTS, CHROMIUM, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is missing")
SETUP = "?train.epochs=15&teacher.epochs=2&teacher.model.width=64"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("classroom")
    env = {"KD_RUNS_DIR": str(root), "KD_SERVE": "processes", "KD_WORKER_PROCESSES": "2",
           "KD_INSTRUCTOR_TOKEN": "e2e-token"}
    with app_server(ARTIFACTS / "streamlit_classroom.log", env) as url:
        yield url, root


def test_four_browsers_train_at_once_each_sees_only_its_own_run(server):
    from playwright.sync_api import sync_playwright
    from kdengine.core.store import Store
    url, root = server
    names = ["Ann", "Bob", "Cat", "Dan"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = []
        try:
            for name in names:                       # one context each: four separate sessions
                page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
                page.goto(url + SETUP)
                page.get_by_role("button", name="Train").wait_for(timeout=120_000)
                box = page.get_by_label("Your name")
                box.fill(name)
                box.press("Enter")
                page.get_by_text(re.compile(f"You are {name}")).wait_for(timeout=60_000)
                pages.append(page)
            for page in pages:                       # four Train clicks, back to back
                page.get_by_role("button", name="Train").click()
            store = Store(root)
            wait_until(lambda: len(store.list_runs()) == 4, 60, "four runs submitted")
            wait_until(lambda: all(r["status"] == "done" for r in store.list_runs()), 240,
                       "all four runs to finish", poll=1.0)
            runs = store.list_runs()
            sids = [re.search(r"sid=([0-9a-f]{12})", pg.evaluate("() => location.href")).group(1)
                    for pg in pages]
            by_owner = {r["owner"]: r["id"] for r in runs}
            assert set(by_owner) == set(sids)              # one run per session, none lost
            for page, sid in zip(pages, sids):
                mine = by_owner[sid]
                page.get_by_text(mine).first.wait_for(timeout=60_000)
                text = page.inner_text("body")
                assert not any(other in text for other in by_owner.values() if other != mine)
            pages[0].screenshot(path=str(ARTIFACTS / "classroom_ann.png"), full_page=True)
        except Exception:
            for i, page in enumerate(pages):
                page.screenshot(path=str(ARTIFACTS / f"classroom_fail_{i}.png"), full_page=True)
            raise
        finally:
            browser.close()
