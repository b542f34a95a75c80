"""ui/live.py: the live-poll fragment redraws while active and reruns the page once when the
activity ends (so the page draws its final state and stops polling)."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _script():
    import streamlit as st

    from ui.live import live_fragment
    ss = st.session_state
    ss.setdefault("renders", 0)
    ss.setdefault("checks", 0)
    answers = ss["answers"]            # what is_active() says, one per call (then the last again)

    def is_active() -> bool:
        ss["checks"] += 1
        return answers[min(ss["checks"], len(answers)) - 1]

    def render(label: str) -> None:
        ss["renders"] += 1
        st.markdown(f"{label} {ss['renders']}")

    live_fragment(render, is_active, "drawn", key="t")


def _run(answers: list[bool]) -> AppTest:
    at = AppTest.from_function(_script, default_timeout=30)
    at.session_state["answers"] = answers
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_activity_that_ends_during_a_redraw_reruns_the_page_once():
    at = _run([True, False])           # active when the page ran, finished by the end of render
    assert at.session_state["renders"] == 2          # the fragment, then the one full rerun
    assert at.markdown[0].value == "drawn 2"
    at.run()                                          # no longer active: no more reruns
    assert at.session_state["renders"] == 3


def test_still_active_or_never_active_draws_once_per_run():
    for answers in ([True], [False]):
        at = _run(answers)
        assert at.session_state["renders"] == 1, answers
        at.run()
        assert at.session_state["renders"] == 2, answers


def _hurried_script():
    import streamlit as st

    from ui import live
    ss = st.session_state
    ss.setdefault("renders", 0)
    hurry = ss["hurry"]                # what hurry() says, one per call (then the last again)

    def hurrying() -> bool:
        ss["hurry_checks"] = ss.get("hurry_checks", 0) + 1
        return hurry[min(ss["hurry_checks"], len(hurry)) - 1]

    def render() -> None:
        ss["renders"] += 1
        st.markdown(f"drawn {ss['renders']}")

    real = st.fragment

    def spy(fn, run_every=None):                # the interval each page run registers
        ss.setdefault("intervals", []).append(run_every)
        return real(fn, run_every=run_every)
    st.fragment = spy
    try:
        # the same answers drive ``hurry`` or, with ss["pace"] = "slow", ``slow``
        live.live_fragment(render, lambda: True, key="h", **{ss.get("pace", "hurry"): hurrying})
    finally:
        st.fragment = real


def test_hurry_polls_fast_until_it_ends_then_reruns_the_page_once():
    """A run with no point yet is polled every HURRY_EVERY seconds; once the point is there the
    page reruns once and the fragment is back at the normal pace (hurry is not asked again while
    the fragment was drawn unhurried)."""
    at = AppTest.from_function(_hurried_script, default_timeout=30)
    at.session_state["hurry"] = [True, False]   # hurrying when the page ran; done by the redraw
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["renders"] == 2          # the fragment, then the one full rerun
    assert at.session_state["hurry_checks"] == 3     # page, fragment, page again: not hurried
    from ui.live import HURRY_EVERY
    assert at.session_state["intervals"] == [HURRY_EVERY, 1.0]
    at.run()
    assert at.session_state["renders"] == 3 and at.session_state["hurry_checks"] == 4


def test_slow_polls_seldom_until_it_ends_then_reruns_the_page_once():
    """A queued or paused run is polled every SLOW_EVERY seconds; once it moves again the page
    reruns once and the fragment is back at the normal pace."""
    at = AppTest.from_function(_hurried_script, default_timeout=30)
    at.session_state["hurry"], at.session_state["pace"] = [True, False], "slow"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["renders"] == 2          # the fragment, then the one full rerun
    from ui.live import SLOW_EVERY
    assert at.session_state["intervals"] == [SLOW_EVERY, 1.0]


def test_live_charts_skip_plotly_validation_and_send_the_same_spec():
    """ui/charts.show hands plotly_chart its dicts unvalidated: the spec must be what validation
    (``go.Figure(**d)`` in ``plotly_chart``) would have sent, template included."""
    import json

    import plotly.io
    import plotly.tools
    import streamlit.elements.plotly_chart  # noqa: F401  (sets Streamlit's plotly template)

    from ui import charts
    series = {k: [(i, i / 4, 0.5 + i / 100) for i in range(12)]
              for k in ("test_acc", "train_acc", "agreement", "loss/kd", "loss/total")}
    figs = [charts.accuracy_figure(series, {"teacher_test_acc": 0.9, "baseline_test_acc": 0.8}),
            charts.accuracy_figure({}), charts.loss_figure(series, "loss/kd"),
            charts.metric_figure(series, "agreement", "agreement", "%", y_percent=True)]
    for fig in figs:
        validated = plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True)
        sent = plotly.io.to_json(charts.checked(fig).to_dict(), validate=False)
        assert json.loads(sent) == json.loads(plotly.io.to_json(validated, validate=False))


def _figures_script():
    import streamlit as st

    from dataclasses import replace

    from kdengine import RunSnapshot
    from ui import charts
    ss = st.session_state
    snap = RunSnapshot(run_id="r", owner="", name="", config={}, status="running",
                       series={"test_acc": [(1, 1.0, 0.5)], "loss/kd": [(1, 1.0, 0.2)]},
                       latest={"test_acc": 0.5})
    first = charts.live_figures(snap, "k")
    again = charts.live_figures(replace(snap, progress=0.5), "k")      # no plotted point moved
    snap.series["test_acc"].append((2, 2.0, 0.6))
    moved = charts.live_figures(snap, "k")
    ss["same"] = all(again[n] is first[n] for n in first)
    ss["rebuilt"] = moved["accuracy"] is not first["accuracy"]
    ss["names"] = list(moved)


def test_live_figures_are_rebuilt_only_when_a_plotted_point_changes():
    at = AppTest.from_function(_figures_script, default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["same"] and at.session_state["rebuilt"]
    assert at.session_state["names"] == ["loss/kd", "accuracy"]


def test_live_views_share_the_servers_rerun_budget(monkeypatch):
    """Each polling view gets max(its own interval, views polling / budget): one alone keeps its
    interval, a class of thirty shares the budget, and a view that leaves or lapses frees its share."""
    from ui import live
    clock = [100.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    p = live.Pollers()
    assert p.interval(("s0", "lab"), 0.2, 12.0) == 0.2
    for i in range(1, 30):
        p.interval((f"s{i}", "lab"), 0.2, 12.0)
    assert p.count() == 30 and p.interval(("s0", "lab"), 0.2, 12.0) == 30 / 12.0
    assert p.interval(("s0", "lab"), 3.0, 12.0) == 3.0          # slower than its share: its own
    for i in range(15):
        p.leave((f"s{i}", "lab"))
    assert p.interval(("s29", "lab"), 0.2, 12.0) == 15 / 12.0
    clock[0] += 11.0                                            # the others stopped redrawing
    assert p.interval(("s29", "lab"), 0.2, 12.0) == 0.2 and p.count() == 1


def _ticking_script():
    import streamlit as st

    from ui import live
    ss = st.session_state
    ss["page_runs"] = ss.get("page_runs", 0) + 1
    if ss.get("tick"):                 # a redraw of the fragment an earlier page run drew
        ss["tick"] = False
        ss["body"]()
        return
    real = st.fragment

    def keep(fn, run_every=None):
        ss["body"] = fn
        return real(fn, run_every=run_every)
    st.fragment = keep
    try:
        live.live_fragment(lambda: st.markdown("drawn"), lambda: ss["active"], key="k",
                           stale=lambda: ss.pop("stale", False))   # the rerun reloads it
    finally:
        st.fragment = real


def test_a_view_drawn_active_asks_again_until_a_page_run_draws_it_ended():
    """If the page rerun a redraw asked for never completes (lost or cut short on a busy server),
    the next redraw asks again: the view cannot stay on "running"."""
    at = AppTest.from_function(_ticking_script, default_timeout=30)
    at.session_state["active"] = True
    at.run()
    drawn_active = at.session_state["body"]
    at.session_state["active"] = False          # the run ended
    for _ in range(2):                           # two redraws of the fragment drawn active
        runs = at.session_state["page_runs"]
        at.session_state["tick"], at.session_state["body"] = True, drawn_active
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.session_state["page_runs"] == runs + 2       # the redraw, and the page rerun


def test_a_stale_page_reruns_at_the_next_redraw_and_a_fresh_one_does_not():
    """``stale()`` (Soft targets: the run wrote a newer checkpoint than the page loaded): a redraw
    of the fragment reruns the whole page, which draws the fragment again from the new state."""
    at = AppTest.from_function(_ticking_script, default_timeout=30)
    at.session_state["active"] = True
    at.run()
    drawn = at.session_state["body"]
    for stale, page_runs in ((False, 1), (True, 2)):
        at.session_state["stale"] = stale
        runs = at.session_state["page_runs"]
        at.session_state["tick"], at.session_state["body"] = True, drawn
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.session_state["page_runs"] == runs + page_runs, stale
