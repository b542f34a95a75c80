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
