"""Overview: what the results file holds and where to go next."""

from __future__ import annotations

import streamlit as st

from core import config
from core.present import tables
from ui.components import store_or_stop, use_app_menu

use_app_menu()
st.title("SparseBench")
st.caption("Compare LLM pruning and activation-sparsity methods on the same footing: your own "
           "runs beside the figures published in papers and earlier reports.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    counts = tables.run_counts(store.runs())

own = int(counts.loc[counts["Origin"] == tables.ORIGIN_NAMES["own"], "Runs"].sum())
published = int(counts.loc[counts["Origin"] == tables.ORIGIN_NAMES["published"], "Runs"].sum())
first, second, third = st.columns(3)
first.metric("Own runs", own)
second.metric("Published reference runs", published)
third.metric("Results file", config.db_path().name, help=str(config.db_path()))

if own + published == 0:
    st.info("The results file is empty. Published reference figures are imported from "
            "core/store/published/ at start; launch a pruning run to add your own.")
else:
    st.dataframe(counts, hide_index=True, width="content")

st.subheader("What next")
NEXT = [
    ("pages/launch.py", "Launch a run", ":material/rocket_launch:",
     "prune a model (magnitude, Wanda, SparseGPT, SparseLLM, OWL) or apply activation sparsity, "
     "then evaluate it; the offline default model needs no hub access."),
    ("pages/perplexity.py", "Perplexity", ":material/show_chart:",
     "method x sparsity tables with the change against dense, and the papers' dataset x sparsity "
     "layout."),
    ("pages/zero_shot.py", "Zero-shot", ":material/checklist:",
     "average accuracy, retention against dense, per-task breakdown and drop from dense."),
    ("pages/activation_sparsity.py", "Activation sparsity", ":material/bolt:",
     "the sparsity-levels search and its comparison with CoreInfer."),
    ("pages/layers.py", "Layer statistics", ":material/stacked_bar_chart:",
     "measured sparsity per block and its spread over the blocks."),
]
for page, label, icon, what in NEXT:
    link, text = st.columns([1, 3], vertical_alignment="center")
    link.page_link(page, label=label, icon=icon)
    text.caption(what)
if own == 0:
    st.info("You have no own runs yet: launch one to see it beside the published figures "
            "(reference rows are marked *Published* in every table and drawn with open markers).")
else:
    st.caption("Filter by origin in each page's sidebar to see only your own runs.")
