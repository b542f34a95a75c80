"""Classroom widgets shared by pages: the student's name and recovery code, the instructor gate,
who is asking (:func:`caller`) and the class's lesson lock.

The name lives in the roster (:mod:`kdengine.teaching.classroom`) and in the URL (``?student=``),
so a reload keeps it; a new tab without ``?sid`` gets the student's runs back from their code, and
a name another student has asks for that student's code instead of making a second identity.
The instructor token is checked once per browser session (``?tok=`` or typed in) and then removed
from the URL, so a shared screen or a copied link never shows it.

The lesson lock is the server's (``class.json`` in the data folder, :mod:`kdengine.core.class_state`),
so a reload, a new tab, a page switch or a hand-edited URL keeps it. An instructor's lesson link
(``?lesson=..&lock=..``) opened by the instructor sets it; opened by a student it opens the lesson
and its values start the knobs the lock leaves free. Every page that starts runs builds them through
:func:`with_locks` and says which knobs are locked (:func:`locks_notice`); the engine applies the
lock again to every run a student submits.
"""
from __future__ import annotations

from typing import Any, Mapping

import streamlit as st

from kdengine import (Caller, ClassState, ConfigError, NameTaken, Roster, RunConfig, apply_locks,
                      class_lock, data_root, link_for_student, locks_line, parse_link, public_url)
from kdengine.teaching.classroom import clean_name, token_matches
from ui.engine import OWNER_KEY, OWNER_PARAM, owner_id

NAME_PARAM = "student"
TOKEN_PARAM = "tok"
INSTRUCTOR_KEY = "kd_instructor"
LINK_KEY = "lessons_link"


def roster() -> Roster:
    # The data folder, not the engine's store: the sidebar on every page must not wait for the
    # engine (worker processes, torch) on a fresh server.
    return Roster(data_root())


def class_state() -> ClassState:
    """The lesson lock and the revealed answers (the data folder's ``class.json``)."""
    return ClassState(data_root())


def caller() -> Caller:
    """Who this browser session is to the engine: its owner id, and whether it gave the token."""
    return Caller(owner_id(), is_instructor())


def may_change(owner: str) -> bool:
    """Whether this session may stop, delete, ... a run or sweep of ``owner`` (the engine checks
    again; pages use this to offer only what is allowed)."""
    return caller().may_change(owner or "")


def is_instructor() -> bool:
    ss = st.session_state
    if not ss.get(INSTRUCTOR_KEY) and token_matches(st.query_params.get(TOKEN_PARAM)):
        ss[INSTRUCTOR_KEY] = True
    if TOKEN_PARAM in st.query_params:
        del st.query_params[TOKEN_PARAM]
    return bool(ss.get(INSTRUCTOR_KEY))


def instructor_gate() -> None:
    """Stop the page here unless this session has given the instructor token."""
    if is_instructor():
        return
    st.info("This page is for the instructor: open it with the instructor link, or type the "
            "instructor token.", icon=":material/lock:")
    given = st.text_input("Instructor token", type="password", key="instructor_token_input")
    if given:
        if token_matches(given):
            st.session_state[INSTRUCTOR_KEY] = True
            st.rerun()
        st.error("That is not the instructor token.")
    st.stop()


def server_url() -> str | None:
    """The address students open, when the server was started with one (``python -m kdengine
    serve --public-url``); links for others are built under it. None: links use the address this
    browser used, as before. A bad value is shown, and links fall back."""
    try:
        return public_url()
    except ConfigError as e:
        st.warning(f"The server's public address is not valid ({e}); links use this browser's.")
        return None


def student_link_notice() -> None:
    """Tell the instructor the link students open (only known with a public URL)."""
    url = server_url()
    if url:
        st.caption(f"Students open **{url}/**")


def session_params() -> dict[str, str]:
    """The query params that identify this session (owner id, and the name once typed): pages that
    rewrite the URL start from these."""
    me = owner_id()
    name = roster().name_of(me)
    return {OWNER_PARAM: me, **({NAME_PARAM: name} if name else {})}


def identity_box() -> None:
    """In the sidebar: the student's display name (typed once), their code, and a way back in."""
    ss, qp = st.session_state, st.query_params
    me = owner_id()
    book = roster()
    kept = book.merged_into(me)
    if kept:                   # the instructor merged this identity into another: go there
        ss[OWNER_KEY] = qp[OWNER_PARAM] = kept
        st.rerun()
    name = book.name_of(me)
    with st.sidebar:
        if name:
            if qp.get(NAME_PARAM) != name:
                qp[NAME_PARAM] = name
            st.caption(f"You are **{name}** · code `{book.code_of(me)}` "
                       "(type it in a new tab to get your runs back)")
            return
        typed = st.text_input("Your name", key="kd_name_input", max_chars=40,
                              placeholder="shown to your instructor")
        code = st.text_input("…or your code from another tab", key="kd_code_input",
                             max_chars=8, placeholder="e.g. K7QP3M")
        if code:
            owner = book.owner_for_code(code)
            if owner is None:
                st.error("No student has that code on this server.")
            else:
                ss[OWNER_KEY] = owner
                qp[OWNER_PARAM] = owner
                st.rerun()
        elif typed and clean_name(typed):
            try:
                book.register(me, typed)
            except NameTaken as e:      # one identity per student: their code brings it back
                st.warning(str(e), icon=":material/badge:")
            else:
                st.rerun()


# -- lesson locks ----------------------------------------------------------------------------------
def _url_link(lessons=None):
    """This session's lesson link, read from the URL when a page first sees its ``?lesson=`` (page
    switches clear the URL; the link's starting values stay for the session). An instructor's
    link with ``lock=`` sets the class lock, once per link."""
    ss, qp = st.session_state, st.query_params
    link = ss.get(LINK_KEY)
    asked = qp.get("lesson")
    if link is None or (asked and (link.lesson is None or link.lesson.id != asked)):
        link = ss[LINK_KEY] = parse_link(qp.to_dict(), lessons)
        lock = class_lock(link)
        if lock is not None and is_instructor():
            class_state().set_lock(lock, caller())
    return link


def lesson_link_state(lessons=None):
    """What this page works under (a ``LinkState``): the class lock the server holds (lesson and
    locked values, the same in every tab and after a reload) and this session's link, whose values
    for unlocked knobs are starting points and whose values for locked ones are refused, visibly
    (``refused``)."""
    return link_for_student(_url_link(lessons), class_state().lock(), lessons)


def lesson_locks() -> dict[str, Any]:
    """Locked knob -> the value the class lock fixes (empty without one)."""
    return lesson_link_state().locked


def lock_refusals(params: Mapping[str, Any], locks: Mapping[str, Any] | None = None) -> list[str]:
    """The config fields of a URL (e.g. a hand-edited ``?method.params.T=9``) that the class lock
    overrules, each with the value that is used instead (and a lesson link's ``lock=`` that a
    student cannot set)."""
    link = lesson_link_state()
    locks = link.locked if locks is None else locks
    out = list(link.refused)            # the lesson link's own (a lock= only the instructor sets)
    seen = {p.split(":", 1)[0] for p in out}
    for k, v in locks.items():
        raw = params.get(k) if k not in seen else None
        raw = raw[-1] if isinstance(raw, list) else raw
        if raw is not None and not _same(raw, v):
            out.append(f"{k}: your instructor has fixed it at {v}; the link's {raw} is not used")
    return out


def _same(raw: Any, value: Any) -> bool:
    try:
        return float(raw) == float(value)
    except (TypeError, ValueError):
        return str(raw).strip().lower() == str(value).strip().lower()


def show_refusals(problems: list[str]) -> None:
    """The link values the class lock overrules, in a visible notice."""
    if problems:
        from ui.words import problem_text
        st.warning("Your instructor has fixed some values for this lesson; the link's are not "
                   "used:\n\n" + "\n".join(f"- {problem_text(p)}" for p in problems),
                   icon=":material/lock:")


def locks_under(prefix: str, locks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The locked fields directly under the config section ``prefix`` (e.g. ``method.params.``),
    by field name, for :func:`ui.widgets.render_fields`'s ``locked``."""
    locks = lesson_locks() if locks is None else locks
    return {k[len(prefix):]: v for k, v in locks.items()
            if k.startswith(prefix) and "." not in k[len(prefix):]}


def with_locks(cfg: RunConfig, locks: Mapping[str, Any] | None = None) -> RunConfig:
    """``cfg`` with the locked knobs at the lock's values (``locks``: a subset, where only some apply)."""
    return apply_locks(cfg, lesson_locks() if locks is None else locks)[0]


def locks_notice(*more: str) -> None:
    """Say which knobs the class lock fixes, at which values (and ``more`` about this page)."""
    locks = lesson_locks()
    if locks:
        from ui.words import knob_label
        st.info(" ".join([locks_line(locks, knob_label), *more]), icon=":material/lock:")


def number_knob(where, label: str, path: str, lo: int, hi: int, default: int, key: str) -> int:
    """A whole-number input for the config field ``path``, drawn disabled at the lock's value when
    the class lock fixes that field (its own key, so the unlocked widget's state is left alone)."""
    locks = lesson_locks()
    if path in locks:
        where.number_input(label, value=locks[path], disabled=True, key=f"{key}.locked",
                           help="Fixed by your instructor for this lesson.")
        return locks[path]
    return where.number_input(label, lo, hi, default, key=key)


def lock_panel(lesson, values: Mapping[str, Any], key: str) -> None:
    """Instructor: fix some of ``lesson``'s knobs for the whole class at ``values`` (the others
    start there), change them, or lift the lock. The values are checked as a link's would be."""
    from kdengine import lesson_lock
    state = class_state()
    lock = state.lock()
    held = list(lock.locked) if lock is not None and lock.lesson == lesson.id else []
    pick_key = f"{key}.knobs"
    if pick_key not in st.session_state:
        st.session_state[pick_key] = held
    from ui.words import knob_label
    pick = st.multiselect("Lock these knobs for the class", lesson.knobs, key=pick_key,
                          format_func=knob_label,
                          help="Students see them fixed at the values above, on every page, in "
                               "every tab, after a reload; their runs use them.")
    c1, c2 = st.columns(2)
    if c1.button("Lock for the class", key=f"{key}.set", icon=":material/lock:",
                 disabled=not pick, type="primary"):
        lock, problems = lesson_lock(lesson.id, {k: values[k] for k in pick},
                                     {k: v for k, v in values.items() if k in lesson.knobs})
        if problems:
            st.error("Not locked: " + "; ".join(problems), icon=":material/error:")
        else:
            state.set_lock(lock, caller())
            st.rerun()
    if c2.button("Lift the lock", key=f"{key}.lift", icon=":material/lock_open:",
                 disabled=lock is None):
        state.set_lock(None, caller())
        st.session_state.pop(pick_key, None)
        st.rerun()


def lock_line() -> str:
    """The class lock in one line, for the instructor: which lesson, which knobs at which values."""
    lock = class_state().lock()
    if lock is None:
        return "No lesson is locked: students choose every knob themselves."
    from ui.words import knob_label
    return (f"Lesson **{lock.lesson}** is locked for the class: "
            + ", ".join(f"{knob_label(k)} = {v}" for k, v in lock.locked.items()) + ".")
