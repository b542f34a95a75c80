"""bench/ws_session.py against the real app: one websocket session, speaking the browser's protocol,
opens the Lab, presses Train and follows its run live (auto-rerun fragment) until the page says
done; the run is that session's own, with the epochs in its URL. No browser needed."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import app_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
EPOCHS = 60          # a few seconds of live view
SETUP = f"train.epochs={EPOCHS}&teacher.epochs=2&teacher.model.width=64"    # a teacher in seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws_session")
    with app_server(ARTIFACTS / "streamlit_ws.log", {"KD_RUNS_DIR": str(root)}) as url:
        yield url, root


@pytest.fixture
def ws_class(server):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ws_session import WsClass
    finally:
        sys.path.remove(str(ROOT / "bench"))
    with WsClass(server[0]) as c:
        yield c


def test_one_ws_session_trains_and_follows_its_own_run_live(server, ws_class):
    from kdengine import Store
    c = ws_class
    s = c.add(SETUP, ready=None)
    assert s.sid and f"sid={s.sid}" in s.qs                      # the app wrote it into the URL
    assert len(s.widgets) > 20 and "Train" in s.buttons          # the Lab's setup, all reported
    c.press_all()
    end = time.monotonic() + 120
    # "done" is drawn by the fragment's last run, just before the full rerun that ends its timer
    while (s.status != "done" or s.timers) and time.monotonic() < end and not s.closed:
        time.sleep(0.2)
    assert s.status == "done", (s.run_id, s.status, s.progress[-3:])
    row = Store(server[1]).get_run(s.run_id)
    assert row["owner"] == s.sid and row["config"]["train"]["epochs"] == EPOCHS
    assert row["status"] == "done"
    assert any(p.startswith("Student: epoch") for p in s.progress)   # live progress came in...
    assert s.answered["fragment"] + s.answered["early"] > 0      # ...through fragment reruns
    assert s.sent["fragment"] > 0 and not s.timers               # which stopped with the run
