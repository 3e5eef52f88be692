"""Runs: queued / running / finished runs with live progress, logs, cancel and re-run."""

from __future__ import annotations

import streamlit as st

from core.execution import jobs
from core.execution.executors import executor_for
from core.present import runs as run_views
from core.present import tables
from core.store.db import StoreError
from ui.components import memo, store_or_stop, use_app_menu

REFRESH_S = 2
PICK = "run-detail"  # the run picker's key
PENDING = "run-detail-next"  # a run to pick on the next run (set by Re-run)
FLASH = "run-detail-flash"  # a message to show once, after an action

use_app_menu()
st.title("Runs")
st.caption(f"Your own runs, newest first; this page refreshes every {REFRESH_S} s. A background "
           "worker executes queued runs one at a time per device; the page starts it when "
           "needed.")
with store_or_stop():
    store = tables.session_store(st.session_state)


@st.fragment(run_every=REFRESH_S)
def live() -> None:
    try:
        if store.writable:
            executor_for(store).ensure_workers()
        rows = memo(store, "run_rows", live=True)(lambda: run_views.run_rows(store))
        listed = run_views.with_status(store, rows)
    except StoreError as exc:
        st.error(str(exc))
        return
    if listed.empty:
        st.info("No runs yet. Queue one on the Launch page.")
        st.page_link("pages/launch.py", label="Launch a run", icon=":material/rocket_launch:")
        return
    st.markdown(run_views.summary(listed))
    active = run_views.runs_table(store, rows=listed[listed["Status"].isin(run_views.ACTIVE)])
    for fraction, text in run_views.progress_bars(active):
        st.progress(fraction, text=text)
    shown = run_views.runs_table(store, rows=listing(listed))
    st.dataframe(
        shown, hide_index=True, width="stretch",
        column_order=[c for c in shown.columns if c != "Stage"],  # the bars above show it
        column_config={
            "Run": st.column_config.NumberColumn("Run", format="%d", width="small"),
            "Progress": st.column_config.ProgressColumn("Progress", min_value=0, max_value=100,
                                                        format="%.0f%%", width="small"),
            "Error": st.column_config.TextColumn("Error", width="large"),
        },
    )
    try:
        detail(listed, shown)
    except StoreError as exc:
        st.error(str(exc))


def listing(runs):  # noqa: ANN001, ANN201 (DataFrames)
    """The filter and page choice above the list; the rows of the chosen page."""
    left, right = st.columns([3, 1])
    statuses = left.multiselect("Status", run_views.STATUS_ORDER, key="runs-status",
                                placeholder="All statuses")
    pages = run_views.page_of(runs, statuses, 1)[1]
    page = right.number_input("Page", min_value=1, max_value=pages, step=1, key="runs-page",
                              help=f"{run_views.PAGE_ROWS} runs per page, newest first.")
    shown, _ = run_views.page_of(runs, statuses, int(page))
    st.caption(f"Page {min(int(page), pages)} of {pages}: {len(shown)} runs shown.")
    return shown


def detail(runs, shown) -> None:  # noqa: ANN001
    st.subheader("Run details")
    if PENDING in st.session_state:
        st.session_state[PICK] = st.session_state.pop(PENDING)
    # The runs of the page shown, the active ones and the run picked before.
    active = runs[runs["Status"].isin(run_views.ACTIVE)]["Run"].tolist()
    ids = list(dict.fromkeys([*active, *shown["Run"].tolist()]))
    picked = st.session_state.get(PICK)
    if picked in set(runs["Run"]) and picked not in ids:
        ids.append(picked)
    if picked not in ids:
        st.session_state[PICK] = run_views.default_run(runs)
        ids = list(dict.fromkeys([st.session_state[PICK], *ids]))
    labels = run_views.run_labels(run_views.runs_table(store, rows=runs[runs["Run"].isin(ids)]))
    # The labels never change while a run progresses, so the choice survives the refreshes.
    run_id = int(st.selectbox("Run", ids, key=PICK, format_func=labels.get))
    info = run_views.run_detail(store, run_id)
    status = info["status"]
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH))

    times = "  ·  ".join(f"{k}: **{v}**" for k, v in info["times"].items() if v)
    cancelling = info["cancel_requested"] and status == "running"
    st.markdown(f"Status: **{'cancelling' if cancelling else status}**"
                + (f"  ·  {times}" if times else ""))
    if info["progress"] is not None:
        st.progress(info["progress"].fraction, text=info["progress"].text)

    actions = st.container(horizontal=True)
    if status in ("queued", "running") and actions.button(
            "Cancel", key=f"cancel-{run_id}", icon=":material/cancel:",
            disabled=info["cancel_requested"] or not store.writable,
            help="A queued run is dropped at once; a running one is stopped and stores nothing."):
        new_status = executor_for(store).cancel(run_id)
        st.session_state[FLASH] = (f"Run {run_id} was cancelled." if new_status == "cancelled"
                                   else f"Stopping run {run_id}…")
        st.rerun()
    rerun_problem = None
    if status in run_views.FINISHED and actions.button(
            "Re-run", key=f"rerun-{run_id}", icon=":material/replay:",
            disabled=not store.writable, help="Queue a fresh run with the same settings."):
        try:
            new_id = jobs.rerun(store, run_id)
        except ValueError as exc:  # its spec is no longer valid (e.g. the model folder is gone)
            rerun_problem = f"Run {run_id} cannot be run again: {exc}"
        else:
            executor_for(store).ensure_workers()
            st.session_state[PENDING] = new_id
            st.session_state[FLASH] = f"Queued run {new_id}, a fresh copy of run {run_id}."
            st.rerun()
    if rerun_problem:
        st.error(rerun_problem)

    if info["error"]:
        (st.warning if status == "cancelled" else st.error)(info["error"])
    if status == "done":
        results = run_views.run_results(store, run_id)
        if not results.empty:
            st.table(results, hide_index=True, border="horizontal")
        if saved := run_views.saved_model(info["spec"]):
            st.markdown(saved)
    st.markdown("**Log** (last 40 lines)")
    st.code("\n".join(run_views.log_tail(store, run_id)) or "(no log lines yet)",
            language=None, wrap_lines=True)
    st.download_button("Full log", lambda: run_views.full_log(store, run_id),
                       file_name=f"run-{run_id}.log", mime="text/plain", key=f"log-{run_id}",
                       on_click="ignore", icon=":material/download:")
    with st.expander("Settings and environment"):
        left, right = st.columns(2)
        left.markdown("**Settings**")
        left.table(run_views.spec_rows(info["spec"]), hide_index=True, hide_header=True,
                   border="horizontal")
        right.markdown("**Environment**")
        if info["environment"]:
            right.table(run_views.environment_rows(info["environment"]), hide_index=True,
                        hide_header=True, border="horizontal")
        else:
            right.caption("The environment is recorded when the run starts.")


live()
