"""Instructor: the class at a glance, behind the instructor token.

The lesson lock (which lesson is open for the class, which knobs are fixed: kept by the server,
changed or lifted here), the class board (per lesson, every student's knob against their test
accuracy with the class mean, its spread and the student-alone level; who is running, done or
failed, live), the students (rename, merge two identities of one), a CSV of the class and a new
class. The logic lives in :mod:`kdengine.teaching.board` and :mod:`kdengine.teaching.classroom`;
this page lays it out.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdengine import (NotAllowed, RunSnapshot, by_lesson, class_csv, flatten, knob_spec, lesson_board,
                      load_lessons, merge_students, new_class, who_is_where)
from kdengine.teaching.board import STATES, lesson_of
from kdengine.teaching.classroom import (CLI_OWNERS, fold_children, student_labels, student_rows,
                                         varying_knobs)
from ui import charts, widgets
from ui.board_charts import board_figure, knob_label
from ui.classroom import (caller, class_state, instructor_gate, lock_line, lock_panel, roster,
                          student_link_notice)
from ui.engine import get_engine
from ui.live import live_fragment

st.title("Instructor")
instructor_gate()
student_link_notice()
ss = st.session_state
engine = get_engine()
book, state, who = roster(), class_state(), caller()
lessons = load_lessons()
by_id = {l.id: l for l in lessons}
OTHER = "(runs of no lesson)"
PCT = st.column_config.NumberColumn(format="percent")


def class_runs() -> list[RunSnapshot]:
    """This class's runs (a closed class's are archived: stored, not on the board)."""
    return engine.list_runs(limit=5000, archived=False)


# -- the lesson lock --------------------------------------------------------------------------------
st.subheader("Lesson lock")
st.markdown(lock_line())
ready = [l.id for l in lessons if not l.missing()]
held = state.lock()


def lock_form() -> None:
    """Pick a lesson, set its knobs, choose which to fix for the class (ui.classroom.lock_panel)."""
    if not ready:
        st.warning("No lesson can run yet (their presets or pages are missing).")
        return
    if "ins_lock_lesson" not in ss:
        ss["ins_lock_lesson"] = held.lesson if held is not None and held.lesson in ready else ready[0]
    lesson = by_id[st.selectbox("Lesson", ready, key="ins_lock_lesson",
                                format_func=lambda i: f"{by_id[i].order}. {by_id[i].title}")]
    mine = held is not None and held.lesson == lesson.id
    start = {**lesson.knob_values(), **(held.values if mine else {}), **(held.locked if mine else {})}
    base = lesson.base_config()
    cols = st.columns(min(3, max(1, len(lesson.knobs))))
    values = {}
    for i, k in enumerate(lesson.knobs):
        spec = knob_spec(base, k)
        values[k] = widgets.widget(spec, f"ins_lock.{lesson.id}.{k}", start[k], cols[i % len(cols)])
    lock_panel(lesson, values, key=f"ins_lockp.{lesson.id}")


with st.expander("Open a lesson for the class, change or lift its lock", icon=":material/lock:",
                 expanded=held is None):
    lock_form()


# -- the class board (live) -------------------------------------------------------------------------
def counts_row(runs: list[RunSnapshot], labels: dict[str, str], names: dict[str, str]) -> None:
    owners = [o for o in labels if o not in CLI_OWNERS]
    named = sum(o in names for o in owners)
    st.markdown(f"**{state.label()}** · {len(owners)} student(s): {named} named, "
                f"{len(owners) - named} unnamed · {len(runs)} run(s)")
    where = who_is_where(runs, labels)
    for col, s in zip(st.columns(len(STATES)), STATES):
        col.metric(s, len(where[s]), help="Students whose newest run is " + s)
        if where[s]:
            col.caption(", ".join(where[s][:8]) + (" …" if len(where[s]) > 8 else ""))


def lesson_view(lesson_id: str, runs: list[RunSnapshot], labels: dict[str, str]) -> None:
    lesson = by_id[lesson_id]
    board = lesson_board(lesson, runs, labels)
    with st.container(key="instructor_board"):
        charts.show(board_figure(board), key=f"board_{lesson_id}")
    if board.mean is not None:
        sd = f" ± {board.std:.1%}" if board.std is not None else " (one run: no spread yet)"
        st.caption(f"Class mean {board.mean:.1%}{sd} over {board.done} finished run(s)."
                   + (f" Student alone: {board.alone:.1%} (from {board.alone_n} run(s))."
                      if board.alone is not None else
                      " No run trained the student alone, so there is no reference line."))
    if any(s.n > 1 and s.std == 0 for s in board.spreads):
        st.caption("A spread of 0: those runs share every setting, the seed included, so they "
                   "are one result. Ask students to pick different seeds to see the spread "
                   "over seeds.")
    if board.other_data:
        st.caption(f"{board.other_data} run(s) of this lesson on another data set than "
                   f"{board.data} are not drawn.")
    if board.spreads:
        st.dataframe(pd.DataFrame([{knob_label(board.knob): s.x, "runs": s.n, "mean": s.mean,
                                    "sd": s.std} for s in board.spreads]),
                     hide_index=True, column_config={"mean": PCT, "sd": PCT},
                     key=f"board_table_{lesson_id}")
    shown = lesson_id in state.revealed()
    if st.button("Hide the answer from the class" if shown else "Reveal the answer to the class",
                 key=f"reveal_{lesson_id}", icon=":material/lightbulb:"):
        state.reveal(lesson_id, not shown, who)
        st.rerun()
    st.caption(("Students can see the answer: " if shown else "Hidden from students: ")
               + lesson.answer)


def other_runs(runs: list[RunSnapshot], labels: dict[str, str]) -> None:
    """Runs of no lesson, sweep and TA-gap cells folded under their sweep."""
    groups = fold_children([r for r in runs if lesson_of(r) is None])
    knobs = varying_knobs([g.head.config for g in groups])[:6]
    rows = []
    for g in groups:
        r = g.head
        flat = flatten(r.config)
        row = {"run": r.run_id, "student": labels.get(r.owner or "", r.owner),
               "name": r.name + (f" (best of {len(g.runs)} in its sweep)" if g.is_parent else ""),
               "method": flat.get("method.name"), "data": flat.get("data.name"),
               "status": r.status, "test acc.": r.latest.get("test_acc")}
        row.update({k: flat.get(k) for k in knobs})
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="instructor_other",
                 column_config={"test acc.": PCT})


def board() -> None:
    runs = class_runs()
    names = book.names()
    labels = student_labels(runs, names)
    counts_row(runs, labels, names)
    if not runs:
        st.info("No runs in this class yet. Runs started from Lessons or the Lab appear here.",
                icon=":material/groups:")
        return
    groups = by_lesson(runs)
    picks = [l.id for l in lessons if l.id in groups]
    picks += [OTHER] if any(lesson_of(r) is None for r in runs) else []
    if ss.get("ins_board_lesson") not in picks:
        lock = state.lock()
        ss["ins_board_lesson"] = lock.lesson if lock and lock.lesson in picks else picks[0]
    pick = st.selectbox("Lesson", picks, key="ins_board_lesson",
                        format_func=lambda i: i if i == OTHER else
                        f"{by_id[i].order}. {by_id[i].title} ({len(groups[i])} run(s))")
    if pick == OTHER:
        other_runs(runs, labels)
    else:
        lesson_view(pick, groups[pick], labels)


st.subheader("Class board")
live_fragment(board, lambda: any(r.active for r in engine.runs()), key="instructor", every=2.0)


# -- students ---------------------------------------------------------------------------------------
st.subheader("Students")
runs = class_runs()
names = book.names()
labels = student_labels(runs, names)
for o in names:                      # named students without a run yet are students too
    labels.setdefault(o, names[o])
rows = {s.owner: s for s in student_rows(runs, names)}
table = [{"student": labels[o], "code": book.code_of(o) or "", "runs": rows[o].runs if o in rows else 0,
          "active": rows[o].active if o in rows else 0,
          "latest acc.": rows[o].latest_acc if o in rows else None,
          "best acc.": rows[o].best_acc if o in rows else None}
         for o in sorted(labels, key=lambda o: labels[o].lower()) if o not in CLI_OWNERS]
if table:
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch", key="instructor_students",
                 column_config={"latest acc.": PCT, "best acc.": PCT})
students = [o for o in labels if o not in CLI_OWNERS]
with st.expander("Rename a student, or merge two identities of one student",
                 icon=":material/badge:"):
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    target = c1.selectbox("Student", students, key="ins_rename_who", format_func=labels.get)
    new_name = c2.text_input("New name", key="ins_rename_name", max_chars=40)
    if c3.button("Rename", key="ins_rename", disabled=not (target and new_name)):
        try:
            book.rename(target, new_name, who)
            st.rerun()
        except (NotAllowed, ValueError) as e:         # e.g. another student has that name
            st.error(str(e), icon=":material/error:")
    m1, m2, m3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    old = m1.selectbox("Merge", students, key="ins_merge_old", format_func=labels.get)
    into = m2.selectbox("into (kept)", students, key="ins_merge_new", format_func=labels.get,
                        index=min(1, len(students) - 1) if students else 0)
    if m3.button("Merge", key="ins_merge", disabled=not students or old == into):
        ss["ins_confirm_merge"] = True

    def merge() -> None:
        try:
            ss["ins_merged"] = (merge_students(engine, book, old, into, who), labels[old],
                                labels[into])
        except (NotAllowed, ValueError) as e:
            ss["ins_merged"] = str(e)

    if old and into:
        widgets.confirm("ins_confirm_merge", f"Move every run of {labels[old]} to {labels[into]} "
                        f"and keep one identity, {labels[into]}'s?", merge, "Yes, merge")
    done = ss.pop("ins_merged", None)
    if isinstance(done, tuple):
        st.success(f"Moved {done[0]} run(s) of {done[1]} to {done[2]}.")
    elif done:
        st.error(done, icon=":material/error:")


# -- the class as a whole ---------------------------------------------------------------------------
st.subheader("This class")
c1, c2 = st.columns(2)
c1.download_button("Download the class (CSV)", class_csv(runs, labels),
                   file_name=f"kd_{state.label().replace(' ', '_')}.csv", mime="text/csv",
                   icon=":material/download:", key="instructor_csv", disabled=not runs)
if c2.button("Start a new class", key="ins_new_class", icon=":material/restart_alt:"):
    ss["ins_confirm_new"] = True


def start_new() -> None:
    ss["ins_new_done"] = new_class(engine, book, who)


widgets.confirm("ins_confirm_new", f"Close {state.label()}: its {len(runs)} run(s) stay stored "
                "(the Runs page lists them) but leave the board; names are freed for the next "
                "class, the lock is lifted and the answers are hidden again.", start_new,
                "Yes, start a new class")
if "ins_new_done" in ss:
    st.success(f"{ss.pop('ins_new_done')} is archived; the board is empty for the new class.")
for a in reversed(state.archives()[-3:]):
    st.caption(f"Archived: {a['label']} ({a['runs']} run(s)).")
