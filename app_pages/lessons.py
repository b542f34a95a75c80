"""Lessons: guided workshop steps, each with a preset, a live chart, the class's results and a
question whose answer the instructor reveals.

The lessons are markdown files read by ``kdengine.teaching.lessons``. The instructor opens a lesson
for the class with some knobs locked (here, on the Instructor page, or by opening an instructor link
``?lesson=few-labels&lock=method.params.T&method.params.T=4``); the server keeps that lock, so
locked knobs are drawn disabled at its values in every tab and after a reload, and the engine uses
them for every student's run. Whether a lesson can run (preset, page, method built) is checked here,
at render time.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from kdengine import ConfigError, knob_spec, lesson_board, lesson_link, load_lessons
from kdengine.teaching.lessons import locked_note
from ui import charts, state, widgets
from ui.board_charts import board_figure
from ui.classroom import (caller, class_state, is_instructor, lesson_link_state, lock_panel, roster,
                          server_url, show_refusals)
from ui.engine import get_engine, owner_id
from ui.live import live_fragment, live_run
from ui.nav import existing_pages
from ui.words import error_text, knob_label, plain

ss = st.session_state
engine = get_engine()
owner = owner_id()
lessons = load_lessons()
by_id = {l.id: l for l in lessons}
PAGE_TITLES = {f: t for f, t, _ in existing_pages()}


def open_page(page: str) -> None:
    """A link to another page; plain text when the page is not in the navigation (tests, embeds)."""
    title = PAGE_TITLES.get(page, page)
    try:
        st.page_link(page, label=f"Open {title}", icon=":material/open_in_new:")
    except st.errors.StreamlitPageNotFoundError:
        st.markdown(f"Open the **{title}** page from the sidebar.")

# The class lock is the server's (the same in every tab, after a reload); a link's values start
# the knobs it leaves free.
link = lesson_link_state(lessons)
instructor = is_instructor()
locked_lesson = link.lesson.id if (link.lesson and link.locked) else None
fixed = None if instructor else locked_lesson       # the instructor may read every lesson

st.title("Lessons")
state.show_url_notice(link.problems)
show_refusals(link.refused)
if not lessons:
    st.error("No lessons found in assets/lessons.")
    st.stop()

if "lessons_pick" not in ss:
    ss["lessons_pick"] = link.lesson.id if link.lesson else lessons[0].id
if fixed:
    ss["lessons_pick"] = fixed
lesson = by_id[st.selectbox("Lesson", list(by_id), key="lessons_pick", disabled=bool(fixed),
                            format_func=lambda i: f"{by_id[i].order}. {by_id[i].title}",
                            help="Your instructor has opened this lesson for the class."
                            if fixed else None)]
mine = link.lesson is not None and link.lesson.id == lesson.id
locked = link.locked if mine else {}
st.header(f"{lesson.order}. {lesson.title}")
if locked:     # next to the text, which was written for the preset's values
    st.info(locked_note(lesson, locked, knob_label), icon=":material/lock:")
missing = lesson.missing()
st.markdown(lesson.body)
if missing:
    others = [f"**{PAGE_TITLES[f]}**" for f in PAGE_TITLES if f != "app_pages/lessons.py"]
    # a missing page by its title, not its file
    what = [f"the {PAGE_TITLES.get(m[5:]) or Path(m[5:]).stem.replace('_', ' ')} page"
            if m.startswith("page ") else m for m in missing]
    st.warning(f"This lesson is not ready yet: {', '.join(what)} is not built. Until it is, "
               f"nothing here is run and no result is shown. Pages that exist: "
               f"{', '.join(others) or 'none'}.", icon=":material/construction:")
    if lesson.page_exists():
        open_page(lesson.page)


def knob_widgets() -> tuple[dict, dict]:
    """One widget per lesson knob; locked ones disabled and reset to the link's value every run."""
    base = lesson.base_config()
    defaults = {**lesson.knob_values(), **(link.values if mine else {}), **locked}
    specs, values = {}, {}
    cols = st.columns(min(3, max(1, len(lesson.knobs))))
    for i, k in enumerate(lesson.knobs):
        spec = knob_spec(base, k)
        # the section too where a name alone is ambiguous (teacher width, student width)
        spec["label"] = knob_label(k, spec)
        key = f"lessons.{lesson.id}.{k}"
        if k in locked:
            ss.pop(key, None)          # re-seeded from the link below: the URL value wins
        values[k] = widgets.widget(spec, key, defaults[k], cols[i % len(cols)], disabled=k in locked)
        specs[k] = spec
    values.update(locked)              # whatever the widget says, a locked knob is the link's value
    return values, specs


run_key = f"lessons_run.{lesson.id}"
if not missing:
    st.subheader("Try it")
    values, specs = knob_widgets()
    try:
        cfg = lesson.config(values)
        err = None
    except ConfigError as e:
        cfg, err = None, e
    if err:
        st.error(error_text(err), icon=":material/error:")
    c1, c2 = st.columns([1, 3])
    if c1.button("Start this preset", key="lessons_start", type="primary", disabled=cfg is None,
                 icon=":material/play_arrow:"):
        try:
            ss[run_key] = engine.submit(cfg, owner=owner, name=cfg.name, caller=caller(),
                                        lesson=lesson.id)
        except ConfigError as e:
            st.error(error_text(e), icon=":material/error:")
    c2.caption("Trains the lesson's setup with the values above; your instructor sees your run "
               "next to the class's.")

    def live(run_id: str) -> None:
        snap = engine.snapshot(run_id)
        st.markdown(f"**Run** `{run_id}` · status **{snap.status}**")
        frac = 1.0 if snap.status == "done" else min(1.0, snap.progress)
        st.progress(frac, text=snap.phase_message if snap.phase != "student" else
                    f"student: epoch {snap.epoch:.1f} of {snap.config['train']['epochs']}")
        for note in dict.fromkeys(snap.notices):
            st.caption(plain(note))
        if snap.error and snap.status == "failed":
            st.error(f"The run failed: {snap.error}", icon=":material/error:")
        charts.live_panel(snap, key="lesson")

    if ss.get(run_key):
        live_run(live, ss[run_key], key="lessons")

st.subheader("What to look for")
st.markdown(lesson.look_for or "_(no notes)_")
if lesson.page_exists() and not missing:
    open_page(lesson.page)


def class_view(lesson_id: str) -> None:
    """The class's runs of this lesson in one picture; this student's own runs apart, the others
    without names."""
    from kdengine.teaching.classroom import student_labels
    runs = engine.list_runs(limit=2000, archived=False)
    names = roster().names() if instructor else {}      # a student sees no one else's name
    board = lesson_board(by_id[lesson_id], runs, student_labels(runs, names))
    if not board.points:
        st.caption("No one in the class has run this lesson yet.")
        return
    with st.container(key="lessons_class"):
        charts.show(board_figure(board, me=owner, names=instructor), key=f"class_{lesson_id}")
    if board.mean is not None:
        sd = f" ± {board.std:.1%}" if board.std is not None else ""
        st.caption(f"The class so far: mean {board.mean:.1%}{sd} over {board.done} finished run(s).")


if not missing:
    st.subheader("The class so far")
    live_fragment(class_view, lambda: any(r.active for r in engine.runs()), lesson.id,
                  key="lessons_class", every=5.0)

st.subheader("Check your understanding")
st.markdown(lesson.question)
ans_key = f"lessons_answer.{lesson.id}"
revealed = lesson.id in class_state().revealed()
if not (instructor or revealed):
    st.caption("Your instructor reveals the answer when the class has tried.")
elif ss.get(ans_key):
    st.success(lesson.answer, icon=":material/lightbulb:")
    if st.button("Hide the answer", key="lessons_hide"):
        ss[ans_key] = False
        st.rerun()
elif st.button("Show the answer", key="lessons_show"):
    ss[ans_key] = True
    st.rerun()

if not missing and instructor:      # students never see the lock or the link builder
    with st.expander("Instructor: open this lesson for the class", icon=":material/lock:"):
        if st.button("Hide the answer from the class" if revealed else
                     "Reveal the answer to the class", key="lessons_reveal",
                     icon=":material/lightbulb:"):
            class_state().reveal(lesson.id, not revealed, caller())
            st.rerun()
        st.caption("Locking fixes knobs at the values above for every student, on every page, "
                   "until you lift it (here or on the Instructor page).")
        lock_panel(lesson, values, key=f"lessons_lockp.{lesson.id}")
        st.caption("A link to this lesson with these values (opened by you, it also sets the lock):")
        preset_values = lesson.knob_values()
        lock = ss.get(f"lessons_lockp.{lesson.id}.knobs", [])
        shown = {k: v for k, v in values.items() if k in lock or v != preset_values.get(k)}
        public = server_url()
        if public:
            st.code(lesson_link(lesson.id, shown, lock, base=public), language=None)
        else:
            query = lesson_link(lesson.id, shown, lock)
            base = str(getattr(st.context, "url", "") or "").split("?")[0]
            st.code(f"{base}?{query}" if base else f"?{query}", language=None)
