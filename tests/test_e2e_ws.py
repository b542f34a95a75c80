"""bench/ws_session.py against the real app: one websocket session, speaking the browser's protocol,
opens the Lab, presses Train and follows its run live (auto-rerun fragment) until the page says
done; the run is that session's own, with the epochs in its URL. No browser needed. And, without
a server, the message cache's by-reference path (rare in a short run: only messages of 10 kB and
more are cached)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from support import app_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
EPOCHS = 60          # a few seconds of live view
SETUP = f"train.epochs={EPOCHS}&teacher.epochs=2&teacher.model.width=64"    # a teacher in seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws_session")
    with app_server(ARTIFACTS / "streamlit_ws.log", {"KD_RUNS_DIR": str(root)}) as url:
        yield url, root


def ws_session():
    """bench/ws_session.py (bench/ is not a package: its scripts import each other by name)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import ws_session
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return ws_session


@pytest.fixture
def ws_class(server):
    with ws_session().WsClass(server[0]) as c:
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


def test_a_cached_message_comes_back_by_reference_and_is_resolved_from_the_cache():
    """The server sends a message the client has cached (its hash was in the rerun) as a ref_hash:
    the session draws it from its own cache, as the frontend does, and keeps it (so reports its
    hash) until it has gone unused for more than max_cached_message_age runs."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    s = ws_session().Student("http://localhost:1", "")
    full = ForwardMsg(hash="h1")
    full.metadata.cacheable = True
    full.delta.new_element.markdown.body = "**Run** `r1` · hinton on digits · status **running**"
    s.on_message(full.SerializeToString())
    assert list(s.cache) == ["h1"] and s.run_id == "r1"
    s.run_id = None
    ref = ForwardMsg(ref_hash="h1")
    s.on_message(ref.SerializeToString())
    assert s.run_id == "r1"                                      # drawn from the cache
    for _ in range(2):                  # two full runs without it: still cached (default age 2)...
        s.age_cache(set())
    assert list(s.cache) == ["h1"]
    s.age_cache(set())                  # ...a third drops it
    assert not s.cache
