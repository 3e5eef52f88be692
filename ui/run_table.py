"""The Runs page's list: its filters and order (kept in the URL), the table with the key
results as number columns, and what can be done with the runs ticked in it (compare them,
run them again, archive them)."""

from __future__ import annotations

import zlib
from typing import Any

import pandas as pd
import streamlit as st

from core.execution import jobs
from core.execution.executors import executor_for
from core.present import run_list, tables
from core.present import runs as run_views
from core.store.db import Store
from ui import url_state

TABLE = "runs-table"  # the list's key, with a digest of the rows it shows
TICKED = "runs-ticked"  # the run ids ticked, as the list showed them when ticked
SHOWN = "runs-shown"  # the run ids of the list's rows, in order, as last drawn
ARCHIVED = "runs-archived"  # the Show archived toggle
PAGE = "runs-page"  # the page of the list shown
FLASH = "run-detail-flash"  # a message the details show once, after an action
PENDING = "run-detail-next"  # a run for the details to pick on the next run


def listing(runs: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The Show archived toggle, filters, order and page choice above the list; the rows of
    the page chosen from ``current`` (``runs``, rows of ``with_status`` and
    ``run_list.with_results``, as ``archived_shown`` leaves them)."""
    _toggle()
    found, order_column, page_column = _filters(current)
    ordered = run_list.sorted_runs(found, _order(found, order_column))
    pages = max(1, -(-len(ordered) // run_views.PAGE_ROWS))
    page = url_state.bound(PAGE, "page", lambda: page_column.number_input(
        "Page", min_value=1, max_value=pages, step=1, key=PAGE,
        help=f"{run_views.PAGE_ROWS} runs per page, in the order chosen."),
        default=1, choices=range(1, pages + 1), cast=int)
    shown, _ = run_views.page_of(ordered, None, int(page))
    hidden = len(runs) - len(current)
    st.caption(f"Page {min(int(page), pages)} of {pages}: {len(shown)} of {len(ordered)} "
               "matching runs shown." + (f" {hidden} archived run(s) hidden." if hidden else ""))
    return shown


def archived_shown() -> bool:
    """Whether the list shows archived runs (the toggle's value, or ``?archived=True`` when
    the page opens)."""
    url_state.take(ARCHIVED, "archived", choices=[True], cast=lambda text: text == "True")
    return bool(st.session_state.get(ARCHIVED, False))


def _toggle() -> None:
    value = st.toggle("Show archived", key=ARCHIVED, on_change=_first_page,
                      help="Archived runs are kept whole but left out of this list and of the "
                           "result pages.")
    url_state.put(ARCHIVED, "archived", value, False)


def _filters(runs: pd.DataFrame) -> tuple[pd.DataFrame, Any, Any]:
    """Search, tags, status, method and model filters (each kept in the URL): the runs they
    keep, and the columns left for the order and page pickers."""
    search, tagged, status = st.columns([3, 2, 2])
    text = url_state.bound("runs-search", "q", lambda: search.text_input(
        "Search", key="runs-search", on_change=_first_page,
        placeholder="name, notes, tags, method or model",
        help="Runs whose name, notes, tags, method or model hold this text (ignoring case)."))
    tag_options = run_views.tag_choices(runs)
    chosen = st.session_state.get("runs-tags", [])
    tag_options = list(dict.fromkeys([*tag_options, *chosen]))
    tags = _many(tagged, "Tags", "runs-tags", "tag", tag_options, placeholder="Any tags",
                 help="Runs with every tag chosen.")
    statuses = _many(status, "Status", "runs-status", "status", list(run_views.STATUS_ORDER),
                     placeholder="All statuses")
    method, model, order, page = st.columns([2, 2, 3, 1])
    methods = _many(method, "Method", "runs-method", "method", run_list.method_choices(runs),
                    format_func=tables.method_label, placeholder="All methods")
    models = _many(model, "Model", "runs-model", "model", run_list.model_choices(runs),
                   placeholder="All models")
    found = run_views.matching(runs, text, tags)
    found = found[found["Status"].isin(statuses)] if statuses else found
    return run_list.filtered(found, methods, models), order, page


def _many(column: Any, label: str, key: str, param: str, options: list[Any],
          **kwargs: Any) -> list[Any]:
    return url_state.bound(key, param, lambda: column.multiselect(
        label, options, key=key, on_change=_first_page, **kwargs), choices=options, many=True)


def _first_page() -> None:
    """A new filter or order starts the list on its first page."""
    st.session_state[PAGE] = 1


def _order(runs: pd.DataFrame, column: Any) -> str:
    """The order picker, in ``column``."""
    choices = run_list.sort_choices(runs)
    return url_state.bound("runs-order", "sort", lambda: column.selectbox(
        "Sort by", choices, key="runs-order", on_change=_first_page, format_func=run_list.sort_text,
        help="Over every matching run, before the list is cut into pages; runs without the "
             "number come last."), default=run_list.NEWEST, choices=choices)


def run_table(shown: pd.DataFrame, archived: bool) -> list[int]:
    """The list (rows of ``runs_table``), rows tickable; the run ids ticked.

    The browser keeps ticks by row position, so a list whose rows changed (a filter, another
    order, a run queued or archived) is a new table with nothing ticked."""
    hidden = {"Stage"} | (set() if archived else {"Archived"})  # the bars above show the stage
    ids = shown["Run"].astype(int).tolist()
    if st.session_state.get(SHOWN) != ids:
        st.session_state[SHOWN], st.session_state[TICKED] = ids, []
    key = f"{TABLE}-{zlib.crc32(str(ids).encode()):08x}"
    st.dataframe(shown, hide_index=True, width="stretch", key=key, placeholder="",
                 on_select=lambda: _ticked(key), selection_mode="multi-row",
                 column_order=[c for c in shown.columns if c not in hidden],
                 column_config=_column_config(shown))
    return [i for i in st.session_state.get(TICKED, []) if i in set(ids)]


def _ticked(key: str) -> None:
    """Keep the ticked rows of the table ``key`` as run ids."""
    rows = st.session_state[key].selection.rows
    shown = st.session_state.get(SHOWN, [])
    st.session_state[TICKED] = [shown[r] for r in rows if r < len(shown)]


def _column_config(shown: pd.DataFrame) -> dict[str, Any]:
    """Narrow columns for the run's words, so that its key results show beside them at
    1440 px (a cell cut short is whole in the run's details and on hover); empty cells
    empty."""
    config: dict[str, Any] = {
        "Run": st.column_config.NumberColumn("Run", format="%d", width=48, pinned=True),
        "Name": st.column_config.TextColumn("Name", width=110, pinned=True),
        "Status": st.column_config.TextColumn("Status", width=80),
        "Model": st.column_config.TextColumn("Model", width=110),
        "Progress": st.column_config.ProgressColumn("Progress", min_value=0, max_value=100,
                                                    format="%.0f%%", width="small"),
        "Duration": st.column_config.TextColumn("Duration", width="small"),
        "Started": st.column_config.TextColumn("Started", width="small"),
        "Queued": st.column_config.TextColumn("Queued", width="small"),
        "Error": st.column_config.TextColumn("Error", width="large"),
        "Method": st.column_config.TextColumn(
            "Method", width=240,
            help="The method, its sparsity and what differs from a default run of "
                 "it; every setting is in the run's details below."),
        run_views.TASK_SCORE: st.column_config.NumberColumn(
            run_views.TASK_SCORE, format="%.4g", width=90,
            help="An activation or search run's mean score over its tasks (in each task's "
                 "metric)."),
        run_views.ZERO_SHOT: st.column_config.NumberColumn(
            run_views.ZERO_SHOT, format="%.2f%%", width=105,
            help="Mean accuracy over the tasks scored (the Zero-shot page's Accuracy)."),
        run_views.RETENTION: st.column_config.NumberColumn(
            run_views.RETENTION, format="%.2f%%", width=95,
            help="Zero-shot average / the dense run's over the tasks both have (blank: no "
                 "dense run with the same evaluation)."),
    }
    for name in shown.columns:
        if name.startswith(run_views.PPL_PREFIX):
            config[name] = st.column_config.NumberColumn(
                name, format="%.2f", width=100,
                help="Perplexity (blank: diverged or not evaluated).")
    return config


def ticked_actions(store: Store, ticked: list[int], runs: pd.DataFrame) -> None:
    """Compare, Re-run and Archive for the runs ticked in the list (what was done is said
    once in the details, after a rerun that shows it)."""
    if not ticked:
        st.caption("Tick runs in the list to compare them, run them again or archive them.")
        return
    status = dict(zip(runs["Run"], runs["status"], strict=True))
    finished = [i for i in ticked if status.get(i) in run_views.FINISHED]
    bar = st.container(horizontal=True, vertical_alignment="center")
    bar.markdown(f"**Ticked:** {', '.join(f'run {i}' for i in ticked)}")
    bar.page_link("pages/compare.py", label="Compare", icon=":material/compare:",
                  query_params={"runs": [str(i) for i in ticked[:8]]},
                  help="Open them side by side on the Compare page (up to 8).")
    if bar.button("Re-run", key="ticked-rerun", icon=":material/replay:",
                  disabled=not finished or not store.writable,
                  help="Queue a fresh copy of each finished run ticked."):
        _rerun(store, finished)
    if bar.button("Archive", key="ticked-archive", icon=":material/archive:",
                  disabled=not finished or not store.writable,
                  help="Leave the finished runs ticked out of the list and the result pages "
                       "(Restore in a run's details brings one back)."):
        _archive(store, finished)


def _done(message: str) -> None:
    st.session_state[FLASH] = message
    st.rerun()


def _rerun(store: Store, run_ids: list[int]) -> None:
    copies: dict[int, int] = {}  # run id -> the id of its fresh copy
    for run_id in run_ids:
        try:
            copies[run_id] = jobs.rerun(store, run_id)
        except ValueError as exc:  # its spec is no longer valid (a model folder is gone)
            st.error(f"Run {run_id} cannot be run again: {exc}")
    if not copies:
        return
    executor_for(store).ensure_workers()
    st.session_state[PENDING] = max(copies.values())
    st.session_state[TICKED] = []
    message = "Queued " + ", ".join(f"run {new} (a fresh copy of run {old})"
                                    for old, new in copies.items()) + "."
    if len(copies) < len(run_ids):  # keep the errors on screen
        st.success(message)
    else:
        _done(message)


def _archive(store: Store, run_ids: list[int]) -> None:
    try:
        done = store.archive(run_ids)
    except ValueError as exc:  # e.g. queued again meanwhile
        st.error(str(exc))
        return
    st.session_state[TICKED] = []
    _done(f"Archived {len(done)} run(s): the result pages leave them out, and so does the list "
          "unless 'Show archived' is on; Restore in a run's details brings one back.")
