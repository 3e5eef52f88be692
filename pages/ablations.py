"""Compute time and hyperparameter ablations: seed 004's Table 3 and Table 4 layouts."""

from __future__ import annotations

import streamlit as st

from core.present import ablations, charts, tables
from ui.components import memo, show_table, store_or_stop, use_app_menu

use_app_menu()
st.title("Compute time and ablations")
st.caption("Pruning time per method and sparsity (seed 004 Table 3), the cost of each own run, "
           "and hyperparameter grids (seed 004 Table 4): your sweeps and the published ones.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    timing = memo(store, "metrics", "timing")(lambda: tables.load_metrics(store, "timing"))
    memory = memo(store, "metrics", "memory")(lambda: tables.load_metrics(store, "memory"))
    # Published grids come from the published perplexities; own sweeps from their own runs.
    perplexity = memo(store, "metrics", "perplexity", "published")(
        lambda: tables.load_metrics(store, "perplexity", origin="published"))
    grids = memo(store, "abl.list", live=True)(lambda: ablations.ablation_list(store, perplexity))

st.subheader("Pruning time")
pruned = timing[~timing["dense"]] if not timing.empty else timing
groups = tables.choices(pruned, "group")
if not groups:
    st.info("No pruning times stored yet: every pruning run stores its own.")
else:
    group = st.selectbox("Source", groups, help="Times from different machines are not "
                                                "comparable, so one source at a time.")
    show_table(memo(store, "abl.time", group)(
        lambda: ablations.compute_time_grid(timing, group)), "compute-time")
    st.plotly_chart(memo(store, "abl.time_chart", group)(lambda: charts.compute_time_chart(
        ablations.compute_time_long(timing, group), f"Pruning time · {group}")))

with st.expander("Cost of each own run (time, memory, device)"):
    costs = memo(store, "abl.costs")(lambda: ablations.run_costs(timing, memory))
    if costs.empty:
        st.info("No own runs yet.")
    else:
        show_table(costs, "run-costs", own_runs=True)

st.subheader("Hyperparameter grids")
if not grids:
    st.info("No sweeps yet. Queue one from the Launch page (Sweep section).")
    st.stop()
labels = [g.label for g in grids]
grid = grids[labels.index(st.selectbox("Grid", labels))]
cells, params = memo(store, "abl.cells", grid.label, live=True)(
    lambda: ablations.ablation_cells(store, perplexity, grid))
if cells.empty or not params:
    st.info("This grid has no cells to show.")
    st.stop()
if len(params) == 1:
    cells = cells.assign(metric="perplexity")
    rows, columns = params[0], "metric"
else:
    left, right = st.columns(2)
    rows = left.selectbox("Rows", params, index=0)
    columns = right.selectbox("Columns", [p for p in params if p != rows], index=0)
    for name in [p for p in params if p not in (rows, columns)]:
        values = sorted(dict.fromkeys(cells[name]), key=str)
        fixed = st.selectbox(f"{name} (fixed)", values)
        cells = cells[cells[name] == fixed]
grid_table = ablations.ablation_table(cells, rows, columns)
show_table(grid_table, "ablation-grid", whole=True)
st.plotly_chart(charts.ablation_heatmap(grid_table, grid.label, memo(store, "abl.spec", grid.label)(
    lambda: ablations.grid_spec(store, perplexity, grid))))
