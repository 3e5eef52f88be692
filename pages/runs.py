"""Runs: queued / running / finished runs with live progress, logs, cancel and re-run; their
names, notes and tags (edited here, shown as plain text), archive and restore.  ``?run=<id>``
opens a run's details, and picking a run writes it there, so the link can be shared."""

from __future__ import annotations

import streamlit as st

from core.engine import devices
from core.execution import cluster, jobs
from core.execution.executors import executor_for, executor_name
from core.present import run_list, tables
from core.present import runs as run_views
from core.store.db import StoreError
from ui import run_table
from ui.components import memo, store_or_stop, use_app_menu
from ui.run_meta import checked, meta_fields

REFRESH_S = 2
PICK = "run-detail"  # the run picker's key
PENDING = run_table.PENDING  # a run to pick on the next run (set by Re-run)
FLASH = run_table.FLASH  # a message to show once, after an action
LINKED = "run-detail-linked"  # the ?run= values followed or written in this session
AUTO = "run-detail-auto"  # the run the details chose themselves (no link, Re-run or click since)
ARCHIVED = run_table.ARCHIVED  # the Show archived toggle

use_app_menu()
st.title("Runs")
EXECUTES = {"local": "A background worker executes queued runs one at a time per device (per "
                     "GPU); the page starts it when needed.",
            "ray": "A dispatcher on this machine hands queued runs to the Ray cluster as its "
                   "GPUs and CPUs allow; the page starts it when needed."}
st.caption(f"Your own runs; this page refreshes every {REFRESH_S} s. "
           f"{EXECUTES[executor_name()]} Tick runs in the list to compare them; filters and "
           "order stay in the page's address, to share the view.")
with store_or_stop():
    store = tables.session_store(st.session_state)


@st.fragment(run_every=REFRESH_S)
def live() -> None:
    try:
        if store.writable:
            executor_for(store).ensure_workers()
        rows = memo(store, "run_rows", live=True)(lambda: run_views.run_rows(store))
        results = memo(store, "run_results")(lambda: run_list.key_results(store))
        listed = run_list.with_results(run_views.with_status(store, rows), results)
    except StoreError as exc:
        st.error(str(exc))
        return
    if listed.empty:
        st.info("No runs yet. Queue one on the Launch page.")
        st.page_link("pages/launch.py", label="Launch a run", icon=":material/rocket_launch:")
        return
    archived = run_table.archived_shown()
    current = run_views.shown_runs(listed, archived=archived)
    st.markdown(run_views.summary(current))
    active = run_views.runs_table(store, rows=listed[listed["Status"].isin(run_views.ACTIVE)])
    for fraction, text in run_views.progress_bars(active):
        st.progress(fraction, text=text)
    executors_view()
    shown = run_views.runs_table(store, rows=run_table.listing(listed, current))
    ticked = run_table.run_table(shown, archived)
    run_table.ticked_actions(store, ticked, listed)
    try:
        detail(listed, current, shown)
    except StoreError as exc:
        st.error(str(exc))


def executors_view() -> None:
    """Where runs execute: each GPU's running run and queue (local), or the Ray cluster."""
    if executor_name() == "ray":
        st.caption(cluster.line(cluster.read_summary(store.path)))
        return
    queues = run_views.device_queues(store, devices.slots())
    if not queues.empty:
        st.caption("One run at a time per GPU; auto runs go to the first GPU with room.")
        st.dataframe(queues, hide_index=True, width="content")


def link_to(run_id: int) -> None:
    """Write the picked run into the page's URL (``?run=<id>``), to share."""
    st.query_params["run"] = str(run_id)
    st.session_state.setdefault(LINKED, set()).add(str(run_id))
    st.session_state.pop(AUTO, None)  # a run picked by hand stays picked


def follow_link(runs) -> None:  # noqa: ANN001
    """A link's ``?run=<id>`` picks that run, once: a refresh sent before the URL took a pick
    (still carrying the old value) must not take the pick back.  A link to no own run says
    why."""
    value = st.query_params.get("run")
    run_id, problem = run_views.run_from_url(value, set(runs["Run"]))
    if problem:
        st.warning(problem)
    seen = st.session_state.setdefault(LINKED, set())
    if value not in seen and run_id is not None:  # a link to a run not listed yet stays live
        seen.add(value)
        st.session_state[PICK] = run_id
        st.session_state.pop(AUTO, None)


def pick_run(runs, current, shown) -> int:  # noqa: ANN001
    """The run picker: the runs of the page shown, the active ones and the run picked before
    (by a link, Re-run or a click, archived or not).  Until one is picked so, the details
    follow ``default_run``: the running run, then the newest queued, then the newest."""
    follow_link(runs)
    if PENDING in st.session_state:
        st.session_state[PICK] = st.session_state.pop(PENDING)
        link_to(st.session_state[PICK])
    active = runs[runs["Status"].isin(run_views.ACTIVE)]["Run"].tolist()
    ids = list(dict.fromkeys([*active, *shown["Run"].tolist()]))
    picked = st.session_state.get(PICK)
    if picked in set(runs["Run"]) and picked not in ids:
        ids.append(picked)
    if picked not in ids or st.session_state.get(AUTO) == picked:
        st.session_state[PICK] = st.session_state[AUTO] = run_views.default_run(
            current if len(current) else runs)
        ids = list(dict.fromkeys([st.session_state[PICK], *ids]))
    labels = run_views.run_labels(run_views.runs_table(store, rows=runs[runs["Run"].isin(ids)]))
    # The labels never change while a run progresses, so the choice survives the refreshes.
    return int(st.selectbox("Run", ids, key=PICK, format_func=labels.get,
                            on_change=lambda: link_to(st.session_state[PICK])))


def actions(run_id: int, info: dict) -> str | None:
    """Cancel, Re-run, Archive and Restore, as the run's status allows; what went wrong."""
    status, archived = info["status"], bool(info["archived"])
    row = st.container(horizontal=True)
    if status in ("queued", "running") and row.button(
            "Cancel", key=f"cancel-{run_id}", icon=":material/cancel:",
            disabled=info["cancel_requested"] or not store.writable,
            help="A queued run is dropped at once; a running one is stopped and stores nothing."):
        new_status = executor_for(store).cancel(run_id)
        done(f"Run {run_id} was cancelled." if new_status == "cancelled"
             else f"Stopping run {run_id}…")
    finished = status in run_views.FINISHED
    if finished and row.button("Re-run", key=f"rerun-{run_id}", icon=":material/replay:",
                               disabled=not store.writable,
                               help="Queue a fresh run with the same settings, name, notes "
                                    "and tags."):
        try:
            new_id = jobs.rerun(store, run_id)
        except ValueError as exc:  # its spec is no longer valid (e.g. the model folder is gone)
            return f"Run {run_id} cannot be run again: {exc}"
        executor_for(store).ensure_workers()
        st.session_state[PENDING] = new_id
        done(f"Queued run {new_id}, a fresh copy of run {run_id}.")
    if finished and not archived and row.button(
            "Archive", key=f"archive-{run_id}", icon=":material/archive:",
            disabled=not store.writable,
            help="Leave the run out of this list (kept whole; Restore brings it back)."):
        try:
            store.archive([run_id])
        except ValueError as exc:  # e.g. queued again meanwhile
            return str(exc)
        done(f"Run {run_id} was archived: the result pages leave it out, and so does the list "
             "unless 'Show archived' is on. Restore brings it back.")
    if archived and row.button("Restore", key=f"restore-{run_id}", icon=":material/unarchive:",
                               disabled=not store.writable,
                               help="Back to the list and the result pages."):
        store.restore([run_id])
        done(f"Run {run_id} was restored to the list and the result pages.")
    return None


def done(message: str) -> None:
    """Say ``message`` once on the next run, and rerun (the list shows the change)."""
    st.session_state[FLASH] = message
    st.rerun()


def labels(run_id: int, info: dict) -> None:
    """The run's name, tags and notes as plain text (never Markdown or HTML), and a form to
    edit them."""
    meta = info["meta"]
    if meta.name or meta.tags or meta.notes or info["archived"]:  # no box of dashes
        box = st.container(border=True)
        for label, value in (("Name", meta.name), ("Tags", ", ".join(meta.tags))):
            if value:
                box.text(f"{label}: {value}")
        if meta.notes:
            box.text(meta.notes)
    if info["archived"]:
        box.caption(f"Archived {info['archived']}: the result pages leave it out, and so does "
                    "the list unless 'Show archived' is on.")
    with st.expander("Edit name, notes and tags"), st.form(f"meta-{run_id}", border=False):
        typed = meta_fields(f"edit-{run_id}", meta)
        if not st.form_submit_button("Save", icon=":material/save:",
                                     disabled=not store.writable):
            return
        problems: list[str] = []
        new = checked(*typed, problems)
        if new is None:
            st.error("Nothing was saved. Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
            return
        store.set_meta(run_id, new)
    done(f"Saved the name, notes and tags of run {run_id}.")


def detail(runs, current, shown) -> None:  # noqa: ANN001
    st.subheader("Run details")
    run_id = pick_run(runs, current, shown)
    info = run_views.run_detail(store, run_id)
    status = info["status"]
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH))

    times = "  ·  ".join(f"{k}: **{v}**" for k, v in info["times"].items() if v)
    cancelling = info["cancel_requested"] and status == "running"
    st.markdown(f"Status: **{'cancelling' if cancelling else status}**"
                + (f"  ·  {times}" if times else ""))
    if info["progress"] is not None:
        st.progress(info["progress"].fraction, text=info["progress"].label)
    problem = actions(run_id, info)
    if problem:
        st.error(problem)
    labels(run_id, info)
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
