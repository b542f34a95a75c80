"""Instructor: the class at a glance, behind the instructor token.

One row per student (display name, runs, the latest run and its accuracy), then every run with
sweep and TA-gap children folded under their parent, and the runs' test-accuracy curves whose
legends name only the knobs that differ. The grouping lives in :mod:`kdengine.teaching.classroom`;
this page only lays it out. A fragment refreshes while any run is active.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdengine import RunSnapshot, flatten
from kdengine.teaching.classroom import fold_children, legend_labels, student_label, student_rows
from kdengine.teaching.classroom import varying_knobs
from ui import charts
from ui.classroom import instructor_gate, roster, student_link_notice
from ui.engine import get_engine
from ui.live import live_fragment

st.title("Instructor")
instructor_gate()
student_link_notice()
engine = get_engine()
st.caption("All runs of this server, from every browser session. Students' runs from the Lessons "
           "page are named `lesson:<id>`; sweep and TA-gap runs are folded under their sweep.")
PCT = st.column_config.NumberColumn(format="percent")


def students_table(runs: list[RunSnapshot], names: dict[str, str]) -> None:
    rows = [{"student": s.student, "runs": s.runs, "active": s.active,
             "latest run": s.latest.run_id, "latest": s.latest.name or s.latest.status,
             "latest acc.": s.latest_acc, "best acc.": s.best_acc}
            for s in student_rows(runs, names)]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="instructor_students",
                 column_config={"latest acc.": PCT, "best acc.": PCT})


def runs_table(groups, names: dict[str, str], knobs: list[str]) -> None:
    rows = []
    for g in groups:
        r = g.head
        flat, latest = flatten(r.config), r.latest
        row = {"run": r.run_id, "student (session)": student_label(r.owner, names),
               "name": r.name + (f" (+{len(g.runs) - 1} in its sweep)" if g.is_parent else ""),
               "method": r.config["method"]["name"], "status": r.status,
               "progress": min(1.0, r.progress) if r.status != "done" else 1.0,
               "test acc.": latest.get("test_acc"), "teacher acc.": latest.get("teacher_test_acc"),
               "agreement": latest.get("agreement")}
        row.update({k: flat.get(k) for k in knobs})
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn(min_value=0,
                                                                            max_value=1),
                                "test acc.": PCT, "teacher acc.": PCT, "agreement": PCT})


def body() -> None:
    runs = engine.runs()          # owner=None: every session's runs
    if not runs:
        st.info("No runs on this server yet. Runs started from Lessons or the Lab appear here.",
                icon=":material/groups:")
        return
    names = roster().names()
    students_table(runs, names)
    picks = sorted({r.name or "(unnamed)" for r in runs})
    pick = st.multiselect("Show runs named", picks, key="instructor_names", placeholder="all runs")
    if pick:
        runs = [r for r in runs if (r.name or "(unnamed)") in pick]
    if not runs:
        st.info("No run matches.")
        return
    groups = fold_children(runs)
    heads = [g.head for g in groups]
    runs_table(groups, names, varying_knobs([r.config for r in heads])[:8])
    shown = heads[:20]
    labels = legend_labels(shown)
    curves = []
    for r in shown:
        x, y = charts.xy(engine.snapshot(r.run_id).series, "test_acc")
        knobs = labels[r.run_id]
        curves.append((f"{student_label(r.owner, names)} · {r.run_id[-6:]}"
                       + (f" · {knobs}" if knobs else ""), x, y))
    with st.container(key="instructor_overlay"):
        charts.show(charts.overlay_figure(curves, "test_acc"))
    if len(heads) > 20:
        st.caption(f"Curves of the newest 20 of {len(heads)} runs and sweeps.")


live_fragment(body, lambda: any(r.active for r in engine.runs()), key="instructor",
              every=2.0)
