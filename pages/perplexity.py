"""Perplexity: own runs beside the published figures (seed 000 and seed 004 layouts)."""

from __future__ import annotations

import streamlit as st

from core.present import charts, tables
from ui.components import frozen, memo, show_table, sidebar_filters, store_or_stop, use_app_menu

use_app_menu()
st.title("Perplexity")
st.caption("Lower is better. Δ from dense compares each run with the dense run of the same model "
           "and dataset from the same source (published) or from your own runs; your runs only "
           "with a dense run evaluated on the same windows (perplexity seqlen, max windows) and "
           "dtype.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    all_rows = memo(store, "metrics", "perplexity")(
        lambda: tables.load_metrics(store, "perplexity"))

if all_rows.empty:
    st.info("No perplexity results yet. Launch a pruning run, or check that "
            "core/store/published/figures.csv is present: published figures are imported at start.")
    st.stop()

selection = sidebar_filters(all_rows)
key = frozen(selection)
rows = memo(store, "filtered", "perplexity", key)(
    lambda: tables.filter_rows(all_rows, **selection))
if rows.empty:
    st.info("No perplexity results match the filters in the sidebar.")
    st.stop()

st.subheader("Method × sparsity")
show_table(memo(store, "ppl.table", key)(lambda: tables.perplexity_table(rows)), "perplexity")

st.subheader("Perplexity vs sparsity")
left, right = st.columns(2)
models = tables.choices(rows, "model")
model = left.selectbox("Model", models, index=models.index(tables.default_choice(rows, "model")))
model_rows = rows[rows["model"] == model]
datasets = tables.choices(model_rows, "dataset")
dataset = right.selectbox("Dataset", datasets)
chart_rows = model_rows[model_rows["dataset"] == dataset]
st.plotly_chart(memo(store, "ppl.chart", key, model, dataset)(lambda: charts.perplexity_chart(
    chart_rows, f"{model} · {tables.dataset_label(dataset)}: perplexity vs sparsity")))
st.caption("Filled markers and solid lines: your runs. Open markers and dotted lines: published "
           "figures (source in the legend and on hover). Squares/diamonds: N:M patterns. "
           "Dense is a dashed level (dotted when published), its grey band the 95% interval. "
           "Error bars: the 95% interval of a run's perplexity from its evaluated windows.")

st.subheader("Dataset × sparsity (paper layout)")
groups = tables.choices(model_rows, "group")
left, right = st.columns(2)
group = left.selectbox("Source", groups, key="grid-source")
group_tables = tables.choices(model_rows[model_rows["group"] == group], "table")
table_name = right.selectbox("Published table", [*group_tables, "All tables"],
                             disabled=not group_tables, key="grid-table")
show_table(memo(store, "ppl.grid", key, model, group, table_name)(
    lambda: tables.sparsity_grid(model_rows, model, group,
                                 None if table_name == "All tables" else table_name)),
    "perplexity-grid")

# Read when opened: most visits never look at the times.
timing_box = st.expander("Pruning time", key="ppl-timing", on_change="rerun")
if timing_box.open:
    with store_or_stop():
        timing = memo(store, "metrics", "timing")(lambda: tables.load_metrics(store, "timing"))
    timing_table = memo(store, "ppl.timing", key)(
        lambda: tables.timing_table(tables.filter_rows(timing, **selection)))
    with timing_box:
        if timing_table.empty:
            st.caption("No pruning times among the runs the filters keep.")
        else:
            show_table(timing_table, "pruning-time")
