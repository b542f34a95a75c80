"""The page list. ``app.py`` turns it into ``st.navigation``; a page whose file does not exist yet is
skipped, so a new page appears by adding its file (and a line here), never by editing app.py."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (file relative to the repo root, title, icon). The first existing one is the default page.
PAGES: list[tuple[str, str, str]] = [
    ("pages/lab.py", "Lab", ":material/science:"),
    ("pages/soft_targets.py", "Soft targets", ":material/bar_chart:"),
    ("pages/dark_knowledge.py", "Dark knowledge", ":material/dark_mode:"),
    ("pages/boundaries.py", "Boundaries", ":material/scatter_plot:"),
    ("pages/method_views.py", "Method views", ":material/insights:"),
    ("pages/ta_gap.py", "TA gap", ":material/stairs:"),
    ("pages/sweeps.py", "Sweeps", ":material/grid_on:"),
    ("pages/lessons.py", "Lessons", ":material/school:"),
    ("pages/instructor.py", "Instructor", ":material/co_present:"),
    ("pages/runs.py", "Runs", ":material/table_rows:"),
]


def existing_pages(root: Path = ROOT) -> list[tuple[str, str, str]]:
    return [p for p in PAGES if (root / p[0]).is_file()]


def st_pages():
    """``st.Page`` objects for the pages that exist (Lab first, the default)."""
    import streamlit as st
    found = existing_pages()
    return [st.Page(str(ROOT / f), title=t, icon=i, default=(n == 0))
            for n, (f, t, i) in enumerate(found)]


def guard_direct_link() -> None:
    """Make a direct link to a page work on a freshly started server.

    Streamlit still honours the old ``pages/`` folder convention until the first run of app.py calls
    ``st.navigation``: a first visit straight to ``/soft_targets`` would run the page alone, with
    the file-name sidebar and without app.py's settings. On a session's first run this switches that
    legacy flag off and reruns, so app.py's ``st.navigation`` opens the requested page. Later runs
    only clear the flag (a rerun there would drop the click that triggered the run). Called by
    ``ui.engine``'s helpers, which every page uses first; a no-op once app.py has run."""
    import streamlit as st
    from streamlit.runtime.pages_manager import PagesManager
    first_run = not st.session_state.get("_kd_nav_ok")
    st.session_state["_kd_nav_ok"] = True
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if first_run:
            st.rerun()
