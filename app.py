"""SparseBench dashboard: ``streamlit run app.py``.

Opens the results store once per session (``tables.session_store``: create or migrate the
schema, then import the published figures when they changed), then hands over to the page
chosen in the menu.
"""

from __future__ import annotations

import gc

import streamlit as st

from core import config
from core.present import tables
from core.store.db import StoreError

st.set_page_config(page_title="SparseBench", layout="wide")
#: The server's caches keep about a million long-lived Python objects at 10,000 runs (parsed
#: specs, metric rows): at Python's default thresholds (700, 10, 10) reading them ran two full
#: collections per page, 0.15-0.2 s of a first render.  Young objects are collected every
#: 50,000 allocations instead; cycles are still freed.
GC_THRESHOLDS = (50_000, 20, 100)
if gc.get_threshold() != GC_THRESHOLDS:
    gc.set_threshold(*GC_THRESHOLDS)

#: The menu, in order.  Adding a page is one line here.
PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/perplexity.py", title="Perplexity", icon=":material/show_chart:",
            url_path="perplexity"),
    st.Page("pages/zero_shot.py", title="Zero-shot", icon=":material/checklist:",
            url_path="zero_shot"),
    st.Page("pages/activation_sparsity.py", title="Activation sparsity", icon=":material/bolt:",
            url_path="activation_sparsity"),
    st.Page("pages/layers.py", title="Layer statistics", icon=":material/stacked_bar_chart:",
            url_path="layers"),
    st.Page("pages/report.py", title="Report", icon=":material/description:", url_path="report"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("pages/ablations.py", title="Compute & ablations", icon=":material/timer:",
            url_path="ablations"),
    st.Page("pages/launch.py", title="Launch", icon=":material/rocket_launch:", url_path="launch"),
    st.Page("pages/runs.py", title="Runs", icon=":material/play_circle:", url_path="runs"),
]


def _sidebar_note() -> None:
    st.sidebar.caption(
        f"Results file: `{config.db_path()}`  \n"
        "Set the `SPARSEBENCH_DB` environment variable before starting to use another file."
    )


def _store_error_page(message: str) -> st.Page:
    """A single page that only shows why the store could not be opened (no traceback)."""

    def store_error() -> None:
        st.title("SparseBench")
        st.error(message)

    return st.Page(store_error, title="SparseBench", default=True)


try:
    tables.session_store(st.session_state)
except StoreError as exc:
    _sidebar_note()
    st.navigation([_store_error_page(str(exc))], position="hidden").run()
    st.stop()

_sidebar_note()
st.navigation(PAGES).run()
