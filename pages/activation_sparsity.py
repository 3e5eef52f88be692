"""Activation sparsity: the sparsity-levels search (seed 003) and its comparison with CoreInfer."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.present import activation as activation_views
from core.present import charts, tables
from ui.components import memo, show_table, sidebar_filters, store_or_stop, use_app_menu

use_app_menu()
st.title("Activation sparsity")
st.caption("Per-layer sparsity levels searched on n samples per task (100 in seed 003), then "
           "the best and the averaged (AVG) configuration run on the full dataset and compared "
           "with CoreInfer at the same actual sparsity. % of CoreInfer is computed from the "
           "stored scores; actual sparsity is always measured, never the parameter.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    task_rows = memo(store, "metrics", "task")(lambda: tables.load_metrics(store, "task"))
    activation_rows = memo(store, "metrics", "activation")(
        lambda: tables.load_metrics(store, "activation"))
    finals = tables.final_rows(task_rows, activation_rows)
    trials = memo(store, "search_trials")(lambda: tables.load_search_trials(store))
    own_runs = activation_views.activation_runs_table(task_rows, activation_rows)

if finals.empty and trials.empty and own_runs.empty:
    st.info("No activation-sparsity results yet. Launch a CoreInfer or sparsity-levels run, or "
            "check that core/store/published/ holds figures.csv and search_trials.csv.")
    st.stop()

selection = sidebar_filters(pd.concat([finals[["model", "group", "origin"]],
                                       trials[["model", "group", "origin"]]]), methods=False)
finals = tables.filter_rows(finals, **selection)
trials = tables.filter_rows(trials, **selection)

st.subheader("Sparsity levels vs CoreInfer (full dataset)")
summary = tables.final_summary(finals)
if summary.empty:
    st.info("No full-dataset CoreInfer comparison matches the filters.")
else:
    show_table(summary, "coreinfer-comparison")
    st.plotly_chart(charts.percent_of_coreinfer_chart(summary))

if not own_runs.empty:
    st.subheader("Own CoreInfer and sparsity-levels runs")
    show_table(own_runs, "activation-runs", own_runs=True)

st.subheader("Search configurations")
searches = tables.search_runs(trials)
if searches.empty:
    st.info("No search trials match the filters.")
    st.stop()
label = st.selectbox("Search (model · task · goal · source)", list(searches["label"]))
search = searches[searches["label"] == label].iloc[0]
own_search = search["group"] == tables.OWN_GROUP
left, right = st.columns([2, 3])
with left:
    show_table(tables.search_table(trials, int(search["run_id"])), "search-trials")
chosen = tables.final_table(
    activation_views.search_finals(finals, int(search["run_id"]),
                                   "own" if own_search else "published"),
    search["model"], search["task"], search["goal"], search["group"])
with right:
    st.plotly_chart(charts.search_chart(trials[trials["run_id"] == search["run_id"]], chosen,
                                        search["goal"]))
st.markdown("**Full-dataset runs for this search**")
if chosen.empty:
    st.info("No full-dataset runs stored for this search.")
else:
    show_table(chosen, "search-final")
if own_search:
    st.plotly_chart(charts.levels_chart(
        activation_views.search_levels(store, int(search["run_id"])),
        "Per-block kept fraction of CoreInfer, best and AVG (full dataset)"))

