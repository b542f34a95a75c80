"""Streamlit helpers shared by the pages: navigation list, engine singleton, URL state, widgets and
charts. Pages stay thin (widgets + layout); anything that is not UI lives in ``kdengine``."""
