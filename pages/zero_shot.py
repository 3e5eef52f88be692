"""Zero-shot accuracy: averages, retention against dense, the per-task breakdown and the per-task
drop from dense."""

from __future__ import annotations

import streamlit as st

from core.present import charts, tables
from ui.components import frozen, memo, show_table, sidebar_filters, store_or_stop, use_app_menu

use_app_menu()
st.title("Zero-shot accuracy")
st.caption("Average over each run's scored tasks; retention = pruned average / dense average of "
           "the same model and source, over the tasks both have. Your runs are compared only "
           "with a dense run evaluated with the same few-shot count, example limit and dtype. "
           "Everything is computed from the per-task scores.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    all_rows = memo(store, "metrics", "zero_shot")(
        lambda: tables.load_metrics(store, "zero_shot"))

if all_rows.empty:
    st.info("No zero-shot results yet. Launch an evaluation run with zero-shot tasks, or check "
            "that core/store/published/figures.csv is present: published figures are imported "
            "at start.")
    st.stop()

selection = sidebar_filters(all_rows)
with st.sidebar:
    metric = st.radio("Metric", ["acc", "acc_norm"], format_func=tables.metric_label,
                      help="Tasks without this metric fall back to the other one.")
key = frozen(selection)
rows = memo(store, "filtered", "zero_shot", key)(
    lambda: tables.filter_rows(all_rows, **selection))
if rows.empty:
    st.info("No zero-shot results match the filters in the sidebar.")
    st.stop()

st.subheader("Average accuracy and retention")
average = memo(store, "zs.average", key, metric)(lambda: tables.zero_shot_table(rows, metric))
show_table(average, "zero-shot-average")
st.plotly_chart(memo(store, "zs.retention", key, metric)(
    lambda: charts.retention_chart(average)))

st.subheader("Per-task breakdown")
left, middle, right = st.columns(3)
models = tables.choices(rows, "model")
model = left.selectbox("Model", models, index=models.index(tables.default_choice(rows, "model")))
levels = tables.sparsity_levels(rows[rows["model"] == model])
if not levels:
    st.info(f"{model} has only dense zero-shot results in this selection.")
    st.stop()
sparsity = middle.selectbox("Sparsity", levels)
evaluations = tables.zs_evaluations(rows, model)
evaluation = right.selectbox(
    "Your runs' evaluation settings", evaluations or ["—"], disabled=len(evaluations) < 2,
    help="Own runs are shown, and compared with dense, only within one setting of few-shot "
         "count, example limit and dtype.")
evaluation = evaluation if evaluations else None

shown = (key, model, sparsity, metric, evaluation)
per_task = memo(store, "zs.per_task", *shown)(
    lambda: tables.per_task_table(rows, model, sparsity, metric, evaluation=evaluation))
if per_task.empty:
    st.info(f"No {sparsity} zero-shot runs of {model} with these settings.")
    st.stop()
show_table(per_task, "zero-shot-per-task")
st.plotly_chart(memo(store, "zs.per_task_chart", *shown)(lambda: charts.per_task_chart(
    tables.per_task_long(rows, model, sparsity, metric, evaluation=evaluation))))

st.subheader("Drop from dense per task")
drop = memo(store, "zs.drop", *shown)(
    lambda: tables.drop_table(rows, model, sparsity, metric, evaluation=evaluation))
show_table(drop, "zero-shot-drop", whole=True)
st.plotly_chart(memo(store, "zs.drop_chart", *shown)(lambda: charts.drop_chart(drop)))
st.caption("≈: a drop within noise (its 95% interval, from lm-eval's standard errors, holds 0): "
           "neither better nor worse than dense.")
