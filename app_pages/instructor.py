"""Instructor: every run on this server (all browser sessions) side by side.

A table (who, lesson or name, method, knobs that differ between the runs, status, accuracy) and the
runs' test-accuracy curves overlaid, so a class can compare what each student found. Reads the
engine's in-memory runs (this server process); a fragment refreshes while any run is active.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdengine import ACTIVE, flatten
from ui import charts
from ui.engine import get_engine, owner_id
from ui.live import live_fragment

engine = get_engine()
me = owner_id()

st.title("Instructor")
st.caption("All runs of this server, from every browser session, newest first. Students' runs from "
           "the Lessons page are named `lesson:<id>`.")


def varying_knobs(configs: list[dict]) -> list[str]:
    """Config fields whose value is not the same in every run (what the students changed)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and k != "name"]


def body() -> None:
    runs = engine.runs()          # owner=None: every session's runs
    if not runs:
        st.info("No runs on this server yet. Runs started from Lessons or the Lab appear here.",
                icon=":material/groups:")
        return
    names = sorted({r["name"] or "(unnamed)" for r in runs})
    pick = st.multiselect("Show runs named", names, key="instructor_names",
                          placeholder="all runs")
    if pick:
        runs = [r for r in runs if (r["name"] or "(unnamed)") in pick]
    if not runs:
        st.info("No run matches.")
        return
    knobs = varying_knobs([r["config"] for r in runs])[:8]
    rows = []
    for r in runs:
        flat, latest = flatten(r["config"]), r["latest"]
        who = "you" if r["owner"] == me else (r["owner"] or "cli")[:6]
        row = {"run": r["run_id"], "student (session)": who, "name": r["name"],
               "method": r["config"]["method"]["name"], "status": r["status"],
               "progress": min(1.0, r["progress"]) if r["status"] != "done" else 1.0,
               "test acc.": latest.get("test_acc"), "teacher acc.": latest.get("teacher_test_acc"),
               "agreement": latest.get("agreement")}
        row.update({k: flat.get(k) for k in knobs})
        rows.append(row)
    df = pd.DataFrame(rows)
    pct = st.column_config.NumberColumn(format="percent")
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn(min_value=0, max_value=1),
                                "test acc.": pct, "teacher acc.": pct, "agreement": pct})
    curves = []
    for r in runs[:20]:
        x, y = charts.xy(engine.snapshot(r["run_id"])["series"], "test_acc")
        who = "you" if r["owner"] == me else (r["owner"] or "cli")[:6]
        knob_txt = ", ".join(f"{k.rsplit('.', 1)[-1]}={flatten(r['config']).get(k)}"
                             for k in knobs[:3])
        curves.append((f"{who} · {r['run_id'][-6:]}" + (f" · {knob_txt}" if knob_txt else ""), x, y))
    with st.container(key="instructor_overlay"):
        charts.show(charts.overlay_figure(curves, "test_acc"))
    if len(runs) > 20:
        st.caption(f"Curves of the newest 20 of {len(runs)} runs.")


live_fragment(body, lambda: any(r["status"] in ACTIVE for r in engine.runs()), key="instructor",
              every=2.0)
