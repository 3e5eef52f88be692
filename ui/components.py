"""Widgets every page uses: a table with its notes and downloads, and the sidebar filters.

Pages import these as ``from ui.components import ...``: Streamlit puts the main script's folder
(the repository root, where ``app.py`` is) on ``sys.path``; the tests add the root through
``pythonpath`` in pyproject.toml.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from core.present import export, tables
from core.store.db import Store, StoreError
from ui import url_state

T = TypeVar("T")
APP = Path(__file__).resolve().parent.parent / "app.py"


def use_app_menu() -> None:
    """Run this page inside ``app.py`` when Streamlit ran the page script on its own.

    On a fresh server, the first visit to a page URL (e.g. ``/perplexity``) is run in Streamlit's
    legacy ``pages/`` mode: the page alone, with an automatic menu of file names and without
    ``app.py``'s page config, store check and ``st.navigation`` menu.  Here the page leaves that
    mode and runs ``app.py`` in place, which draws the app's menu and runs this same page from
    it; the outer run then stops.  No rerun, so a click that started this run is not lost.
    Every page calls this first; it does nothing once ``app.py`` has taken over.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()


def memo(store: Store, *key: Hashable, live: bool = False) -> Callable[[Callable[[], T]], T]:
    """``memo(store, "name", args...)(compute)``: ``compute()`` once per results file, version
    of its results (``Store.results_version``: runs queued, claimed or failed leave it alone)
    and key; ``live=True`` for what shows run statuses: once per version of the whole file
    (``Store.version``).  Later reruns get the stored value itself, not a copy (copying a
    30,000-row frame costs seconds), so callers never modify what they get.  A rerun that
    changes nothing (a widget, the Runs page's refresh) so costs a lookup.  The key must name
    everything ``compute`` depends on besides the store."""
    version = store.version() if live else store.results_version()
    full_key = (str(store.path), version, key)

    def run(compute: Callable[[], T]) -> T:
        return _memo(full_key, compute)

    return run


def frozen(value: Any) -> Hashable:
    """A value (a filter selection: dicts, lists) as nested tuples, to be part of a memo key."""
    if isinstance(value, dict):
        return tuple(sorted((k, frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set):
        return tuple(frozen(v) for v in value)
    return value


@st.cache_resource(max_entries=256, show_spinner=False)
def _memo(key: tuple, _compute: Callable[[], Any]) -> Any:  # _compute: not part of the key
    return _compute()


@contextmanager
def store_or_stop() -> Iterator[None]:
    """Read the results store inside ``with store_or_stop():``; a corrupt, locked or unreadable
    file shows its message on the page (no traceback) and stops the page there."""
    try:
        yield
    except StoreError as exc:
        st.error(str(exc))
        st.stop()


#: Tables up to this many rows may be shown whole (``show_table(..., whole=True)``).
WHOLE_ROWS = 40


def show_table(table: tables.Table, name: str, *, whole: bool = False,
               own_runs: bool = False) -> None:
    """The table (a page of it when long), its notes, and CSV / Markdown / LaTeX (booktabs)
    downloads of the whole table (CSV: numbers as numbers, one precision a column; Markdown and
    LaTeX: numbers at their source's precision, up to 4 decimals), written when clicked.

    ``name`` names the download files and keys the buttons (unique per page).  ``whole`` shows
    every row (up to ``WHOLE_ROWS``) instead of a ten-row scrolling box, for tables whose last
    rows matter (averages).  Own runs get a link to their details (``with_run_links``;
    ``own_runs``: every row is one).  Returns nothing: a page calls it as a bare statement, which
    Streamlit's "magic" would otherwise display.
    """
    shown = with_run_links(table.display(rows=_rows_shown(len(table.frame), name)), own_runs)
    if "Model" in shown:  # a local model folder by its name (the downloads keep the path)
        shown = shown.assign(Model=[tables.short_name(m) if isinstance(m, str) else m
                                    for m in shown["Model"]])
    config: dict[str, Any] = {c: st.column_config.TextColumn(width=_text_width(c))
                              for c in shown.columns if _text_width(c)}
    config.update({c: st.column_config.TextColumn(alignment="right", width=_text_width(c))
                   for c in table.numeric_columns})
    if RUN_LINK in shown:
        config[RUN_LINK] = st.column_config.LinkColumn(
            RUN_LINK, display_text="open ↗", width="small",
            help="Opens the run's details on the Runs page (in a new tab); published figures "
                 "have none.")
    height = "content" if whole and len(shown) <= WHOLE_ROWS else "auto"
    st.dataframe(shown, hide_index=True, column_config=config, height=height)
    for note in table.notes:
        st.caption(note)
    csv, markdown, latex = _export_data(table)
    buttons = st.container(horizontal=True)
    buttons.download_button("CSV", csv, file_name=f"{name}.csv",
                            mime="text/csv", key=f"{name}-csv", on_click="ignore",
                            icon=":material/download:")
    buttons.download_button("Markdown", markdown, file_name=f"{name}.md",
                            mime="text/markdown", key=f"{name}-md", on_click="ignore",
                            icon=":material/download:")
    buttons.download_button("LaTeX", latex, file_name=f"{name}.tex", mime="text/x-tex",
                            key=f"{name}-tex", on_click="ignore", icon=":material/download:")


RUN_LINK = "Details"  # the first column: links to own runs' details
#: Widths (px) of the columns whose text runs long, so that it is not cut (a table wider than
#: the page scrolls sideways).
TEXT_WIDTHS = {"Method": 300, "Source": 230, "Settings": 300, "Evaluation": 200, "Note": 400}


def _text_width(column: str) -> int | None:
    """A long text column's width; an interval column's; None: sized by Streamlit."""
    if "interval" in column:
        return 235  # '-25.58 to +10.58 (within noise)'
    return TEXT_WIDTHS.get(column)


def with_run_links(shown: pd.DataFrame, own_runs: bool = False) -> pd.DataFrame:
    """A shown table with a link to each own run's details (``?run=`` of the Runs page), when
    it names runs and has own ones (by its Origin column; every row when ``own_runs``)."""
    if "Run" not in shown or not (own_runs or "Origin" in shown):
        return shown
    own = (np.ones(len(shown), dtype=bool) if own_runs
           else (shown["Origin"] == tables.ORIGIN_NAMES["own"]).to_numpy())
    if not own.any():
        return shown
    links = [f"runs?run={run}" if mine and str(run).isdigit() else ""
             for mine, run in zip(own, shown["Run"], strict=True)]
    return pd.concat([pd.DataFrame({RUN_LINK: links}, index=shown.index), shown], axis=1)


#: A longer table is shown a page of this many rows at a time (its downloads hold every row).
PAGE_ROWS = 250


def _rows_shown(rows: int, name: str) -> slice | None:
    """The rows of a table to show: all, or for a table over ``PAGE_ROWS`` rows the page picked
    in a page field above it (formatting 30,000 rows on every visit costs seconds)."""
    if rows <= PAGE_ROWS:
        return None
    pages = -(-rows // PAGE_ROWS)
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    page = int(left.number_input("Rows page", min_value=1, max_value=pages, step=1,
                                 key=f"{name}-rows-page"))
    start = (page - 1) * PAGE_ROWS
    right.caption(f"Rows {start + 1:,}–{min(start + PAGE_ROWS, rows):,} of {rows:,} (page "
                  f"{page} of {pages}); narrow them with the filters in the sidebar. The "
                  "downloads hold every row.")
    return slice(start, start + PAGE_ROWS)


def _export_data(table: tables.Table) -> tuple[Callable[[], str], ...]:
    """CSV (numbers as numbers: ``Table.for_scripts``), Markdown and LaTeX (as shown, each
    number at its source's precision) of a table (every row) as functions that write them
    when a download is clicked: a page with forty tables (the Report) would otherwise write
    120 files on every visit."""
    numeric = tuple(table.numeric_columns)
    return (lambda: export.to_csv(table.for_scripts()),
            lambda: export.to_markdown(table.display(full=True)),
            lambda: export.to_latex(table.display(full=True), numeric))


def sidebar_filters(rows: pd.DataFrame, *, methods: bool = True) -> dict[str, Any]:
    """Model, method (unless ``methods`` is False), source and origin filters in the sidebar,
    kept in the URL (``?model=&method=&source=&origin=``) so that a filtered view can be shared.

    Returns keyword arguments for ``tables.filter_rows``; an empty selection means all.
    """
    with st.sidebar:
        st.subheader("Filters")
        models = _url_multiselect("Model", "model", tables.choices(rows, "model"),
                                  placeholder="All models")
        chosen_methods = None
        if methods:
            chosen_methods = _url_multiselect("Method", "method", tables.choices(rows, "method"),
                                              format_func=tables.method_label,
                                              placeholder="All methods")
        groups = _url_multiselect("Source", "source", tables.choices(rows, "group"),
                                  placeholder="All sources")
        origins = list(tables.ORIGIN_FILTERS)
        origin = url_state.bound("filter-origin", "origin", lambda: st.radio(
            "Origin", origins, horizontal=True, key="filter-origin"),
            default=origins[0], choices=origins)
    selection = {"models": models or None, "groups": groups or None,
                 "origins": tables.ORIGIN_FILTERS[origin]}
    if methods:
        selection["methods"] = chosen_methods or None
    return selection


def _url_multiselect(label: str, param: str, options: list[Any], **kwargs: Any) -> list[Any]:
    """A multiselect of the sidebar filters bound to ``?param=`` (``url_state.bound``)."""
    key = f"filter-{param}"
    return url_state.bound(key, param, lambda: st.multiselect(label, options, key=key, **kwargs),
                           choices=options, many=True)
