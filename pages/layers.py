"""Layer statistics: measured sparsity per block and the model summary (seed 002's analysis)."""

from __future__ import annotations

import streamlit as st

from core.present import report, tables
from ui.components import frozen, memo, show_table, sidebar_filters, store_or_stop, use_app_menu

use_app_menu()
st.title("Layer statistics")
st.caption("Sparsity measured after pruning: the share of zero weights in each block's linear "
           "layers, and its spread over the blocks (mean, standard deviation, lowest and highest "
           "block). Published reports may give only the summary.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    # One row per run: the per-layer rows are read for the run on screen only.
    all_runs = memo(store, "layer_runs")(lambda: tables.load_layer_runs(store))

if all_runs.empty:
    st.info("No layer statistics yet. Every pruning run stores them; launch one, or check that "
            "core/store/published/figures.csv is present: published figures are imported at start.")
    st.stop()

selection = sidebar_filters(all_runs)
runs = memo(store, "layers.runs", frozen(selection))(
    lambda: tables.layer_runs(tables.filter_rows(all_runs, **selection)))
if runs.empty:
    st.info("No layer statistics match the filters in the sidebar.")
    st.stop()

label = st.selectbox("Run", list(runs["label"]),
                     help="Your runs first (latest first), then the published ones.")
run = runs[runs["label"] == label].iloc[0]
run_id = int(run["run_id"])
with store_or_stop():
    stats = memo(store, "layer_stats", run_id)(lambda: tables.load_layer_stats(store, [run_id]))

st.subheader("Model summary")
show_table(memo(store, "layers.summary", run_id)(
    lambda: tables.layer_summary_table(stats, run_id)), "layer-summary")
found = memo(store, "layers.findings", run_id)(
    lambda: report.layer_findings_for(stats, run_id))
if found:
    st.markdown("\n".join(f"- {f.text}" for f in found))

st.subheader("Sparsity by block")
blocks = memo(store, "layers.blocks", run_id)(
    lambda: tables.block_sparsity_table(stats, run_id))
if blocks.empty:
    st.info("This run stores only the model summary, no per-block values"
            + (" (the published report gives no more)." if run["origin"] == "published" else "."))
else:
    st.plotly_chart(memo(store, "layers.chart", run_id)(
        lambda: report.layer_chart(stats, run_id)))
    show_table(blocks, "layer-blocks")
