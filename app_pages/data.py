"""Data: which real data sets this server has, and loading them from archives (instructor only).

Without a network MNIST, FashionMNIST and CIFAR-10 cannot download. The instructor uploads the
official archives here; :mod:`kdengine.data.archives` checks them and puts them where the data
loading code looks, or says in the page why a file was refused (then nothing is written).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kdengine import ArchiveRefused, import_files
from kdengine.data.archives import TITLES, expected_files
from kdengine.data.fetch import data_dir, listing
from ui.classroom import instructor_gate

st.title("Data")
instructor_gate()
st.caption("The real image data sets of this server. Digits, the 2-D toys and the generated sets "
           "need nothing: they are made on the spot.")

CHECK = {None: "no checksums kept", True: "unchanged", False: "CHANGED since they were loaded"}
table = st.container()           # filled last, so a load just done shows in it
st.subheader("Load a data set from its archives")
st.markdown("Download the official files on a machine with a network, then load them here. "
            "Each file is checked (its name, size and contents) before anything is stored.")
name = st.selectbox("Data set", list(TITLES), format_func=TITLES.get, key="data_name")
st.caption(f"{TITLES[name]} is loaded from: " + ", ".join(f"`{f}`" for f in expected_files(name)))
files = st.file_uploader("Archives", type=["gz"], accept_multiple_files=True, key="data_files")
if st.button("Load", key="data_load", type="primary", disabled=not files,
             icon=":material/upload:"):
    bar = st.progress(0.0, text="checking the files")
    try:
        lines = import_files(name, [(f.name, f) for f in files], data_dir(),
                             progress=lambda fraction, text: bar.progress(fraction, text=text))
    except ArchiveRefused as e:
        bar.empty()
        st.error(f"Nothing was loaded. {e}", icon=":material/block:")
    else:
        bar.empty()
        st.success("\n\n".join(lines), icon=":material/check:")

verify = table.toggle("Check that the files are unchanged", key="data_verify",
                      help="Compares every file with the checksum taken when it was loaded.")
rows = [{"data set": TITLES.get(r["name"], r["name"]),
         "here": "yes" if r["present"] else "missing",
         "size (MB)": round(r["bytes"] / 2**20, 1) if r["present"] else None,
         **({"check": CHECK[r["checksums_ok"]]} if verify else {})}
        for r in listing(verify=verify)]
table.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="data_sets")
