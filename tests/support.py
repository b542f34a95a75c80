"""Helpers the tests share: stored runs for page tests, AppTest drivers, a live app server, waiting.

Plain functions, imported with ``from support import ...`` (pytest puts this folder on ``sys.path``
for test files that are not in a package); the fixtures live in ``conftest.py``.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- stored runs for page tests ---------------------------------------------------------------------
@contextmanager
def data_folder(root):
    """Point ``KD_RUNS_DIR`` at ``root`` for a module's page tests (the pages' engine is keyed by
    it), and back afterwards."""
    old = os.environ["KD_RUNS_DIR"]
    os.environ["KD_RUNS_DIR"] = str(root)
    try:
        yield Path(root)
    finally:
        os.environ["KD_RUNS_DIR"] = old


def train_stored(root, configs: dict, owner: str = "someone", named: bool = False) -> dict[str, str]:
    """Train ``configs`` (key -> RunConfig) to the end in the data folder ``root``; key -> run id.
    ``named`` also gives each run its key as its name."""
    from kdengine import Engine, Store
    eng = Engine(store=Store(root), max_workers=1)
    try:
        ids = {k: eng.submit(cfg, owner=owner, **({"name": k} if named else {}))
               for k, cfg in configs.items()}
        for rid in ids.values():
            assert eng.wait(rid, timeout=300) == "done", eng.snapshot(rid).error
    finally:
        eng.shutdown()
    return ids


# -- AppTest ----------------------------------------------------------------------------------------
def app_test(path: str = "app.py", *, page: str | None = None, query: dict | None = None,
             state: dict | None = None, timeout: float = 120):
    """Run ``path`` (the app, or one page file on its own) once, optionally switched to ``page``
    (a direct link), with URL query parameters and session state set first."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / path), default_timeout=timeout)
    at.query_params.update(query or {})
    for k, v in (state or {}).items():
        at.session_state[k] = v
    (at.switch_page(page) if page else at).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def lab(query: dict | None = None):
    """The app's first page, the Lab, with these URL query parameters."""
    return app_test(query=query)


def status_line(at) -> str:
    """The live run's "**Run** `id` · ... · status **x**" line, or ''."""
    lines = [m.value for m in at.markdown if m.value.startswith("**Run**")]
    return lines[0] if lines else ""


def poll(at, until, timeout: float = 120.0, every: float = 0.3) -> None:
    """``run_every`` fragments do not tick under AppTest: rerun the page, as a browser's refresh
    would, until ``until(at)`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if until(at):
            return
        time.sleep(every)
    raise AssertionError(f"timed out; page says {status_line(at)!r}, errors "
                         f"{[e.value for e in at.error]}")


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_server(log_path: Path, env: dict, start_timeout: float = 90.0):
    """``streamlit run app.py`` on a free localhost port with ``env`` added; yields its URL once
    its health check answers, and stops it afterwards. Its output goes to ``log_path``."""
    import subprocess
    import sys
    import urllib.request
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=root, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://localhost:{port}"
        try:
            end = time.monotonic() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < end, f"streamlit did not start in {start_timeout:.0f} s"
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def until(cond, timeout: float = 30.0, every: float = 0.05) -> bool:
    """Wait until ``cond()`` holds; False when ``timeout`` seconds pass first."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(every)
    return True


def choose_option(page, box: str, option, timeout: float = 60.0) -> None:
    """Pick ``option`` (a name or a pattern) in the Streamlit selectbox with key ``box``, in a real
    browser. A page run that ends while the list is open (e.g. the Lab's once its methods have
    loaded, later on a busy machine) redraws the box and closes the list: open it again."""
    end = time.monotonic() + timeout
    while True:
        page.locator(f".st-key-{box}").click()
        item = page.get_by_role("option", name=option)
        try:
            item.first.wait_for(timeout=5_000)
            item.first.click(timeout=5_000)
            return
        except Exception:
            if time.monotonic() > end:
                raise
            page.keyboard.press("Escape")
