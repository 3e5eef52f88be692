"""Runs: queued / running / finished runs with live progress, logs, cancel and re-run."""

from __future__ import annotations

import json

import streamlit as st

from core import jobs, run_views, tables
from core.executor import LocalExecutor
from core.store import StoreError

REFRESH_S = 2

st.title("Runs")
st.caption(f"Refreshes every {REFRESH_S} s. A background worker executes queued runs one at a "
           "time per device.")
try:
    store = tables.session_store(st.session_state)
except StoreError as exc:
    st.error(str(exc))
    st.stop()


@st.fragment(run_every=REFRESH_S)
def live() -> None:
    try:
        if store.writable:
            LocalExecutor(store).ensure_workers()
        runs = run_views.runs_table(store)
    except StoreError as exc:
        st.error(str(exc))
        return
    if runs.empty:
        st.info("No runs yet. Queue one on the Launch page.")
        st.page_link("pages/launch.py", label="Launch a run", icon=":material/rocket_launch:")
        return
    counts = runs["status"].value_counts()
    st.write("  ·  ".join(f"**{counts[s]}** {s}" for s in counts.index))
    for _, row in runs[runs["status"].isin(["running", "cancelling"])].iterrows():
        fraction = (row["progress"] or 0) / 100
        st.progress(fraction, text=f"Run {row['run']} ({row['method']} {row['sparsity']}, "
                                   f"{row['model']}): {row['stage'] or 'starting'}")
    st.dataframe(
        runs, hide_index=True,
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100,
                                                        format="%.0f%%"),
            "error": st.column_config.TextColumn("error", width="large"),
        },
    )
    detail(runs)


def detail(runs) -> None:
    st.subheader("Run details")
    run_id = st.selectbox("Run", runs["run"].tolist(), key="run-detail",
                          format_func=lambda i: _label(runs, i))
    info = run_views.run_detail(store, int(run_id))
    status = info["status"]
    left, right = st.columns(2)
    if status in ("queued", "running") and left.button("Cancel", key=f"cancel-{run_id}",
                                                       disabled=bool(info["cancel_requested"])):
        jobs.request_cancel(store, int(run_id))
        st.rerun(scope="fragment")
    if status in ("done", "failed", "cancelled") and right.button("Re-run",
                                                                 key=f"rerun-{run_id}"):
        new_id = jobs.rerun(store, int(run_id))
        LocalExecutor(store).ensure_workers()
        st.toast(f"Queued run {new_id}")
        st.rerun(scope="fragment")
    if info["error"]:
        (st.warning if status == "cancelled" else st.error)(info["error"])
    st.code("\n".join(run_views.log_tail(store, int(run_id))) or "(no log lines yet)",
            language=None)
    with st.expander("Spec and environment"):
        st.code(json.dumps({"spec": info["spec"], "environment": info["environment"]}, indent=2),
                language="json")


def _label(runs, run_id: int) -> str:
    row = runs[runs["run"] == run_id].iloc[0]
    return f"{run_id} · {row['status']} · {row['method']} {row['sparsity']} · {row['model']}"


live()
