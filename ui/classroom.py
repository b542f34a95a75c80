"""Classroom widgets shared by pages: the student's name and recovery code, the instructor gate.

The name lives in the roster (:mod:`kdengine.teaching.classroom`) and in the URL (``?student=``),
so a reload keeps it; a new tab without ``?sid`` gets the student's runs back from their code.
The instructor token is checked once per browser session (``?tok=`` or typed in) and then removed
from the URL, so a shared screen or a copied link never shows it.

An instructor's lesson link (``?lesson=..&lock=..``, :mod:`kdengine.teaching.lessons`) is read on
whichever page it opens and kept for the browser session; every page that starts runs builds them
through :func:`with_locks` and says which knobs are locked (:func:`locks_notice`).
"""
from __future__ import annotations

from typing import Any, Mapping

import streamlit as st

from kdengine import (ConfigError, RunConfig, apply_locks, data_root, locks_line, parse_link,
                      public_url)
from kdengine.teaching.classroom import Roster, clean_name, token_matches
from ui.engine import OWNER_KEY, OWNER_PARAM, owner_id

NAME_PARAM = "student"
TOKEN_PARAM = "tok"
INSTRUCTOR_KEY = "kd_instructor"
LINK_KEY = "lessons_link"


def roster() -> Roster:
    # The data folder, not the engine's store: the sidebar on every page must not wait for the
    # engine (worker processes, torch) on a fresh server.
    return Roster(data_root())


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
            book.register(me, typed)
            st.rerun()


# -- lesson locks ----------------------------------------------------------------------------------
def lesson_link_state(lessons=None):
    """This browser session's lesson link (a ``LinkState``), read from the URL the first time a page
    sees ``?lesson=``: page switches clear the URL, the locks stay for the session."""
    ss = st.session_state
    link = ss.get(LINK_KEY)
    if link is None or (link.lesson is None and "lesson" in st.query_params):
        link = ss[LINK_KEY] = parse_link(st.query_params.to_dict(), lessons)
    return link


def lesson_locks() -> dict[str, Any]:
    """Locked knob -> the value the instructor's link fixes (empty without a link)."""
    return lesson_link_state().locked


def locks_under(prefix: str, locks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The locked fields directly under the config section ``prefix`` (e.g. ``method.params.``),
    by field name, for :func:`ui.widgets.render_fields`'s ``locked``."""
    locks = lesson_locks() if locks is None else locks
    return {k[len(prefix):]: v for k, v in locks.items()
            if k.startswith(prefix) and "." not in k[len(prefix):]}


def with_locks(cfg: RunConfig, locks: Mapping[str, Any] | None = None) -> RunConfig:
    """``cfg`` with the locked knobs at the link's values (``locks``: a subset, where only some apply)."""
    return apply_locks(cfg, lesson_locks() if locks is None else locks)[0]


def locks_notice(*more: str) -> None:
    """Say which knobs the lesson link locks, at which values (and ``more`` about this page)."""
    locks = lesson_locks()
    if locks:
        from ui.words import knob_label
        st.info(" ".join([locks_line(locks, knob_label), *more]), icon=":material/lock:")


def number_knob(where, label: str, path: str, lo: int, hi: int, default: int, key: str) -> int:
    """A whole-number input for the config field ``path``, drawn disabled at the link's value when
    the link locks that field (its own key, so the unlocked widget's state is left alone)."""
    locks = lesson_locks()
    if path in locks:
        where.number_input(label, value=locks[path], disabled=True, key=f"{key}.locked",
                           help="Locked by your instructor's lesson link.")
        return locks[path]
    return where.number_input(label, lo, hi, default, key=key)
