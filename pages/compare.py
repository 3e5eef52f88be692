"""Compare: chosen runs (own or published) side by side with their differences, and the cells of
a sweep or published ablation as a scatter and parallel coordinates."""

from __future__ import annotations

import streamlit as st

from core.present import ablations, charts, compare, tables
from core.store import queries
from ui import url_state
from ui.components import memo, show_table, store_or_stop, use_app_menu

PICKED = "compare-runs"  # the runs picker's key

use_app_menu()
st.title("Compare runs")
st.caption("Pick runs, your own or published ones, to see every stored number side by side. "
           "Differences are against the first run picked: relative change (%) for perplexity, "
           "time and memory, points for accuracy and sparsity.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    runs = memo(store, "runs")(store.runs)
    options = memo(store, "compare.options")(lambda: compare.run_options(runs))

if options.empty:
    st.info("No finished runs to compare yet. Launch a pruning run, or check that "
            "core/store/published/figures.csv is present: published figures are imported at start.")
    st.stop()

labels = dict(zip(options["run_id"].astype(int), options["label"], strict=True))
url_state.take(PICKED, "runs", choices=list(labels), many=True, cast=int)
st.session_state[PICKED] = st.session_state.get(PICKED, [])[:8]
run_ids = st.multiselect("Runs (the first is the reference)", list(labels), key=PICKED,
                         format_func=labels.__getitem__, max_selections=8,
                         placeholder="Pick two or more runs")
url_state.put(PICKED, "runs", run_ids)  # the address shares it: ?runs=3&runs=7
with_dense = st.toggle("Add each run's dense baseline", value=True, key="compare-dense",
                       help="The dense run each picked run is compared with on the Perplexity "
                            "page (same model and source; your runs: the same evaluation "
                            "windows and dtype), as a column after the picked runs.")
if not run_ids:
    st.info("Pick the runs to compare above, or tick them in the list on the Runs page and "
            "press Compare: they open here.")
else:
    picked = tuple(run_ids)
    with store_or_stop():
        added = []
        if with_dense:
            perplexity_rows = memo(store, "metrics", "perplexity")(
                lambda: tables.load_metrics(store, "perplexity"))
            added = memo(store, "compare.dense", picked)(
                lambda: compare.dense_baselines(perplexity_rows, run_ids))
        shown_ids = [*run_ids, *added]
        metrics = memo(store, "compare.metrics", tuple(shown_ids))(
            lambda: tables.prepare(queries.metric_rows(store, run_ids=shown_ids)))
    if added:
        st.caption("Dense baselines added: " + ", ".join(
            labels.get(r, f"run {r}") for r in added) + ".")
    st.subheader("Results")
    show_table(memo(store, "compare.results", tuple(shown_ids))(
        lambda: compare.compare_table(metrics, shown_ids)), "compare-results", whole=True)
    st.subheader("Settings")
    show_table(memo(store, "compare.settings", tuple(shown_ids))(
        lambda: compare.spec_table(runs, shown_ids)), "compare-settings", whole=True)

st.subheader("Sweeps and ablation grids")
with store_or_stop():
    # Published grids come from the published perplexities; own sweeps from their own runs.
    perplexity = memo(store, "metrics", "perplexity", "published")(
        lambda: tables.load_metrics(store, "perplexity", origin="published"))
    grids = memo(store, "abl.list", live=True)(lambda: ablations.ablation_list(store, perplexity))
if not grids:
    st.info("No sweeps or published ablation grids yet. Queue a sweep from the Launch page.")
    st.stop()
grid_labels = [g.label for g in grids]
grid = grids[grid_labels.index(st.selectbox("Grid", grid_labels, key="compare-grid"))]
cells, params = memo(store, "abl.cells", grid.label, live=True)(
    lambda: ablations.ablation_cells(store, perplexity, grid))
if cells.empty or not params:
    st.info("This grid has no cells yet.")
    st.stop()
param = st.selectbox("Parameter on the x axis", params, key="compare-grid-param")
st.plotly_chart(charts.sweep_scatter(cells, param, f"{grid.label}: perplexity vs {param}"))
if len(params) > 1:
    st.plotly_chart(charts.sweep_parallel_chart(cells, params, f"{grid.label}: every cell"))
