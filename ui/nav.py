"""The page list. ``app.py`` turns it into ``st.navigation``; a page whose file does not exist yet is
skipped, so a new page appears by adding its file (and a line here), never by editing app.py."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (file relative to the repo root, title, icon). The first existing one is the default page.
PAGES: list[tuple[str, str, str]] = [
    ("app_pages/lab.py", "Lab", ":material/science:"),
    ("app_pages/soft_targets.py", "Soft targets", ":material/bar_chart:"),
    ("app_pages/dark_knowledge.py", "Dark knowledge", ":material/dark_mode:"),
    ("app_pages/boundaries.py", "Boundaries", ":material/scatter_plot:"),
    ("app_pages/method_views.py", "Method views", ":material/insights:"),
    ("app_pages/ta_gap.py", "TA gap", ":material/stairs:"),
    ("app_pages/sweeps.py", "Sweeps", ":material/grid_on:"),
    ("app_pages/lessons.py", "Lessons", ":material/school:"),
    ("app_pages/instructor.py", "Instructor", ":material/co_present:"),
    ("app_pages/data.py", "Data", ":material/dataset:"),
    ("app_pages/runs.py", "Runs", ":material/table_rows:"),
]


def existing_pages(root: Path = ROOT) -> list[tuple[str, str, str]]:
    return [p for p in PAGES if (root / p[0]).is_file()]


def st_pages():
    """``st.Page`` objects for the pages that exist (Lab first, the default)."""
    import streamlit as st
    found = existing_pages()
    return [st.Page(str(ROOT / f), title=t, icon=i, default=(n == 0))
            for n, (f, t, i) in enumerate(found)]
