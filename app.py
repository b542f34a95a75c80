"""KD Playground: `streamlit run app.py`. Navigation only; the pages live in app_pages/ (see ui/nav.py)."""
import streamlit as st

from ui.classroom import identity_box
from ui import warmup
from ui.nav import st_pages

st.set_page_config(page_title="KD Playground", page_icon=":material/school:", layout="wide")
identity_box()          # the student's name and recovery code, on every page
try:
    st.navigation(st_pages()).run()
finally:
    warmup.start()      # torch, the methods, the resource check: once the first page is drawn
