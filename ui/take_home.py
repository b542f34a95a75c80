"""The "notebook to take home" button: a run as a plain-PyTorch Jupyter notebook that trains it again
(with the teacher's weights, in a .zip), written by ``kdengine.export_notebook`` when pressed."""
from __future__ import annotations

import functools
import json

import streamlit as st


@functools.lru_cache(maxsize=256)
def _problem(config_json: str) -> str | None:
    """Why a config cannot be exported (cached: the live views redraw this button every second)."""
    from kdengine import notebook_problem
    try:
        return notebook_problem(json.loads(config_json))
    except Exception as e:      # a fault in the export must not take the run's page down with it
        return f"the notebook cannot be written for this run ({type(e).__name__}: {e})"


def notebook_button(store, run_id: str, config: dict, key: str, where=None,
                    label: str = "Notebook to take home") -> None:
    """A download button for run ``run_id``'s notebook; off, saying why, for a run the export
    cannot reproduce."""
    from kdengine import export_notebook
    why = _problem(json.dumps(config, sort_keys=True))
    (where or st).download_button(
        label, data=lambda: export_notebook(store, run_id)[1],
        file_name=f"kd_{run_id}.zip", mime="application/zip", key=key,
        icon=":material/school:", on_click="ignore", disabled=why is not None,
        help=why or "A Jupyter notebook that trains this run again in plain PyTorch, step for step "
                    "(on a laptop or on Colab), with the teacher's weights beside it.")
