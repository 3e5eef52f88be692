"""Zero-shot accuracy: averages, retention against dense, and the per-task breakdown."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import charts, export, tables
from core.store import StoreError


def show_table(table: tables.Table, name: str) -> None:
    """The table, its notes, and CSV / Markdown downloads of exactly what is shown."""
    shown = table.display()
    align = {c: st.column_config.TextColumn(alignment="right") for c in table.numeric_columns}
    st.dataframe(shown, hide_index=True, column_config=align)
    for note in table.notes:
        st.caption(note)
    buttons = st.container(horizontal=True)
    buttons.download_button("CSV", export.to_csv(shown), file_name=f"{name}.csv",
                            mime="text/csv", key=f"{name}-csv", on_click="ignore",
                            icon=":material/download:")
    buttons.download_button("Markdown", export.to_markdown(shown), file_name=f"{name}.md",
                            mime="text/markdown", key=f"{name}-md", on_click="ignore",
                            icon=":material/download:")


def sidebar_filters(rows: pd.DataFrame) -> dict[str, Any]:
    """Model, method, source and origin filters (for ``tables.filter_rows``); empty means all."""
    with st.sidebar:
        st.subheader("Filters")
        models = st.multiselect("Model", tables.choices(rows, "model"), placeholder="All models")
        methods = st.multiselect("Method", tables.choices(rows, "method"),
                                 format_func=tables.method_label, placeholder="All methods")
        groups = st.multiselect("Source", tables.choices(rows, "group"),
                                placeholder="All sources")
        origin = st.radio("Origin", list(tables.ORIGIN_FILTERS), horizontal=True)
        metric = st.radio("Metric", ["acc", "acc_norm"], format_func=tables.metric_label,
                          help="Tasks without this metric fall back to the other one.")
    return {"models": models or None, "methods": methods or None, "groups": groups or None,
            "origins": tables.ORIGIN_FILTERS[origin], "metric": metric}


st.title("Zero-shot accuracy")
st.caption("Average over each run's tasks; retention = pruned average / dense average of the same "
           "model and source, over the tasks both have. Computed from the per-task scores.")
try:
    store = tables.session_store(st.session_state)
    all_rows = tables.load_metrics(store, "zero_shot")
except StoreError as exc:
    st.error(str(exc))
    st.stop()

if all_rows.empty:
    st.info("No zero-shot results yet. Launch an evaluation run with zero-shot tasks, or check "
            "that core/published/figures.csv is present: published figures are imported at start.")
    st.stop()

selection = sidebar_filters(all_rows)
metric = selection.pop("metric")
rows = tables.filter_rows(all_rows, **selection)
if rows.empty:
    st.info("No zero-shot results match the filters in the sidebar.")
    st.stop()

st.subheader("Average accuracy and retention")
average = tables.zero_shot_table(rows, metric)
show_table(average, "zero-shot-average")
st.plotly_chart(charts.retention_chart(average))

st.subheader("Per-task breakdown")
left, right = st.columns(2)
models = tables.choices(rows, "model")
model = left.selectbox("Model", models, index=models.index(tables.default_choice(rows, "model")))
levels = tables.sparsity_levels(rows[rows["model"] == model])
if not levels:
    st.info(f"{model} has only dense zero-shot results in this selection.")
    st.stop()
sparsity = right.selectbox("Sparsity", levels)
show_table(tables.per_task_table(rows, model, sparsity, metric), "zero-shot-per-task")
st.plotly_chart(charts.per_task_chart(tables.per_task_long(rows, model, sparsity, metric)))
