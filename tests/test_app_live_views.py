"""Pages watch runs one way: through ``ui/live.py`` (inside the server's redraw budget, only while the
run is active), and they read every run as a ``RunSnapshot``, whether the engine holds it in memory
or it is only in the store (trained by another engine, or training in another process)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdengine import RunConfig, Store

from support import app_test, data_folder, train_stored

ROOT = Path(__file__).resolve().parent.parent
# Pages and ui helpers that redraw while something trains (a run, a sweep, an experiment).
WATCHING = {"app_pages/lab.py", "app_pages/lessons.py", "app_pages/instructor.py",
            "app_pages/sweeps.py", "app_pages/ta_gap.py", "app_pages/boundaries.py",
            "app_pages/method_views.py", "app_pages/soft_targets.py", "ui/search_panel.py"}
# page -> how a test opens it on one run
RUN_PAGES = {"app_pages/method_views.py": {"state": "mv_run"},
             "app_pages/boundaries.py": {"state": "bd_run"},
             "app_pages/soft_targets.py": {"query": "run"}}
EVERY = {"app_pages/method_views.py": 1.0, "app_pages/boundaries.py": 1.0,
         "app_pages/soft_targets.py": 2.0}


def _calls(path: Path) -> set[str]:
    """Names called or decorated with in a file: ``st.fragment(...)`` gives "fragment"."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
    return out


def test_pages_watch_only_through_ui_live():
    """No page or ui helper but ui/live.py makes a fragment, polls on a timer of its own or sleeps;
    every one that watches something uses ui/live.py's live_fragment (or live_run)."""
    files = sorted([*(ROOT / "app_pages").glob("*.py"), *(ROOT / "ui").glob("*.py")])
    bad = [f"{f.relative_to(ROOT)}: {name}" for f in files if f.name != "live.py" or f.parent.name != "ui"
           for name in sorted(_calls(f) & {"fragment", "run_every", "sleep", "experimental_rerun"})]
    assert not bad, bad
    for rel in sorted(WATCHING):
        assert _calls(ROOT / rel) & {"live_fragment", "live_run"}, f"{rel} does not use ui/live.py"


def _cfg(epochs: int = 1) -> RunConfig:
    """A Sobolev run on moons: Method views, Boundaries (2-D) and Soft targets all show it."""
    return RunConfig.from_dict({
        "data": {"name": "moons", "n_samples": 300},
        "teacher": {"model": {"arch": "mlp", "depth": 2, "width": 32}, "epochs": 3},
        "student": {"arch": "mlp", "depth": 1, "width": 8},
        "method": {"name": "sobolev", "params": {"k": 1}},
        "train": {"epochs": epochs, "log_every": 5}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and one "training in another process" (stored as running, in no engine's
    memory), in a data folder of their own."""
    with data_folder(tmp_path_factory.mktemp("live_views")) as root:
        ids = train_stored(root, {"done": _cfg()}, owner="")
        store = Store(root)
        cfg = _cfg(400)
        ids["elsewhere"] = store.create_run(cfg.to_dict(), cfg.hash, owner="", name="elsewhere",
                                            status="running")
        yield ids
        store.set_status(ids["elsewhere"], "interrupted")


@pytest.fixture
def intervals(monkeypatch):
    """The ``run_every`` of every fragment the pages register (None: drawn once, no polling)."""
    import streamlit
    seen: list = []
    real = streamlit.fragment

    def spy(func=None, *, run_every=None, **kw):
        seen.append(run_every)
        return real(func, run_every=run_every, **kw)
    monkeypatch.setattr(streamlit, "fragment", spy)
    return seen


def _open(page: str, run_id: str):
    how = RUN_PAGES[page]
    if "state" in how:
        return app_test(page, state={how["state"]: run_id})
    return app_test(page, query={how["query"]: run_id})


@pytest.mark.parametrize("page", sorted(RUN_PAGES))
def test_a_finished_run_is_drawn_once_and_an_active_one_polls_inside_the_budget(
        page, runs, intervals, monkeypatch):
    """Method views polled every second even for a finished run, Boundaries and Soft targets on
    timers of their own: now each polls only while its run is active, at its share of the
    server's budget (``KD_RERUNS_PER_S``), and a run's end reruns the page once (ui/live.py)."""
    _open(page, runs["done"])
    assert intervals == [None]                      # one view, drawn once: nothing to watch

    # A budget of one redraw a second, five other views polling: this page's share is six
    # seconds, longer than its own interval.
    from ui.live import pollers
    others = [("another session", f"view {i}") for i in range(5)]
    for who in others:
        pollers().interval(who, 1.0, 1.0)
    try:
        with monkeypatch.context() as m:
            m.setenv("KD_RERUNS_PER_S", "1")
            intervals.clear()
            _open(page, runs["elsewhere"])
        assert len(intervals) == 1 and intervals[0] >= 6.0 > EVERY[page], intervals
    finally:
        for who in others:
            pollers().leave(who)
    intervals.clear()
    _open(page, runs["elsewhere"])                  # the budget back: the page's own pace
    assert intervals == [EVERY[page]]


def _listed(at, key: str) -> set[str]:
    """The run ids a run picker offers (its labels start with the id)."""
    return {label.split(" · ")[0] for label in at.selectbox(key=key).options}


def _status_text(at) -> str:
    return " ".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def test_stored_and_live_runs_reach_the_pages_as_the_same_snapshot(runs):
    """A run the pages' engine trains now (in memory) and runs it only has stored (trained by
    another engine, or training in another process) are listed together and drawn the same way."""
    from ui.engine import get_engine
    eng = get_engine()                    # the pages' engine for this data folder
    live = eng.submit(_cfg(400), owner="")
    try:
        assert eng.wait_for(live, "running", timeout=60)
        at = app_test("app_pages/method_views.py", state={"mv_run": live})
        assert {live, runs["done"], runs["elsewhere"]} <= _listed(at, "mv_run")
        assert "status **running**" in _status_text(at)
        at.selectbox(key="mv_run").set_value(runs["done"]).run()
        assert not at.exception and "status **done**" in _status_text(at)
        assert at.get("plotly_chart")                                  # the stored field

        at = app_test("app_pages/boundaries.py", state={"bd_run": live})
        assert {live, runs["done"], runs["elsewhere"]} <= _listed(at, "bd_run")
        assert "**running** · epoch" in _status_text(at)
        at.selectbox(key="bd_run").set_value(runs["done"]).run()
        assert not at.exception and "**done** · epoch 1 of 1" in _status_text(at)

        at = app_test("app_pages/soft_targets.py", query={"run": live})
        assert "live run (running)" in _status_text(at)
        at = app_test("app_pages/soft_targets.py", query={"run": runs["done"]})
        assert "after epoch 1" in _status_text(at) and "live run" not in _status_text(at)
    finally:
        eng.stop(live)
        eng.wait(live, timeout=60)
