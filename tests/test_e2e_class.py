"""Browser test of a class: an instructor and two students in three real browser contexts on one
server. A student cannot delete another student's run (the owner can); the lesson lock the
instructor sets holds through a student's reload and a hand-edited URL, until the instructor lifts
it on the Instructor page."""
from __future__ import annotations

import os

import pytest

from support import app_server
from tests.test_e2e import ARGS, ARTIFACTS, CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is missing")
TOKEN = "e2e-class-token"
ANA, BEA = "a" * 12, "b" * 12
LOCKED = "Your instructor has fixed temperature T = 2.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from kdengine import RunConfig, Store
    root = tmp_path_factory.mktemp("class")
    store = Store(root)                     # Bea's finished run, there before the class starts
    cfg = RunConfig()
    bea_run = store.create_run(cfg.to_dict(), cfg.hash, owner=BEA, name="bea's run")
    store.set_status(bea_run, "done")
    env = {"KD_RUNS_DIR": str(root), "KD_SERVE": "threads", "KD_INSTRUCTOR_TOKEN": TOKEN}
    with app_server(ARTIFACTS / "streamlit_class.log", env) as url:
        yield url, store, bea_run


def test_a_student_cannot_delete_anothers_run_and_the_lock_survives_a_reload(server):
    from playwright.sync_api import expect, sync_playwright
    url, store, bea_run = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = [browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                 for _ in range(3)]
        teacher, ana, bea = pages
        try:
            # Ana sees Bea's run but is offered no Delete; Bea is offered it for her own run
            ana.goto(f"{url}/runs?run={bea_run}&sid={ANA}")
            expect(ana.get_by_text("belong to other students")).to_be_visible(timeout=60_000)
            expect(ana.get_by_role("button", name="Delete")).to_have_count(0)
            bea.goto(f"{url}/runs?run={bea_run}&sid={BEA}")
            expect(bea.get_by_role("button", name="Delete 1 run(s)")).to_be_visible(timeout=60_000)
            assert store.get_run(bea_run) is not None

            # the instructor's link locks T = 2 for the class, on the server
            teacher.goto(f"{url}/lessons?lesson=why-temperature&lock=method.params.T"
                         f"&method.params.T=2.0&tok={TOKEN}")
            expect(teacher.get_by_text("your instructor has fixed").first).to_be_visible(
                timeout=60_000)
            ana.goto(f"{url}/?sid={ANA}")                 # the Lab, without any link
            expect(ana.get_by_text(LOCKED)).to_be_visible(timeout=60_000)
            ana.reload()                                  # F5: a new session, the lock stays
            expect(ana.get_by_text(LOCKED)).to_be_visible(timeout=60_000)
            ana.goto(f"{url}/?sid={ANA}&method.params.T=9.0")     # a hand-edited URL
            expect(ana.get_by_text("the link's 9.0 is not used")).to_be_visible(timeout=60_000)
            ana.screenshot(path=str(ARTIFACTS / "class_locked_lab.png"), full_page=True)

            # the instructor lifts it: after a reload Ana's T is free again
            teacher.get_by_role("link", name="Instructor").click()    # same session: same token
            teacher.get_by_text("change or lift its lock").click()
            teacher.get_by_role("button", name="Lift the lock").click()
            expect(teacher.get_by_text("No lesson is locked")).to_be_visible(timeout=60_000)
            ana.reload()
            expect(ana.get_by_text("Train").first).to_be_visible(timeout=60_000)
            expect(ana.get_by_text(LOCKED)).to_have_count(0)
        except Exception:
            for i, page in enumerate(pages):
                page.screenshot(path=str(ARTIFACTS / f"class_fail_{i}.png"), full_page=True)
            raise
        finally:
            browser.close()
