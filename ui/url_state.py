"""Widget values kept in the page's URL (query parameters), so that a view can be shared.

A widget with ``key`` is bound to the parameter ``param``: a value in the URL is taken when the
page opens (the widget has no value in this session yet) or when the URL says something other
than this module last wrote there (a link followed, ``st.switch_page`` with query parameters),
if it is one of the widget's choices; after the widget is drawn, its value is written back
(left out while it is the default, so an unfiltered view has a plain URL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

WRITTEN = "url-state-written"  # widget key -> the texts it last wrote to the URL


def take(key: str, param: str, *, choices: Sequence[Any] | None = None, many: bool = False,
         cast: Callable[[str], Any] = str) -> None:
    """Before drawing the widget ``key``: its value from ``?param=`` when the page opens.

    Values that ``cast`` refuses or that are not among ``choices`` are dropped (a link made
    before a run or model was removed still opens)."""
    if param not in st.query_params:
        return
    texts = st.query_params.get_all(param)
    if key in st.session_state and st.session_state.get(WRITTEN, {}).get(key) == texts:
        return
    taken = []
    for text in texts:
        try:
            value = cast(text)
        except (TypeError, ValueError):
            continue
        if choices is None or value in choices:
            taken.append(value)
    if many:
        st.session_state[key] = list(dict.fromkeys(taken))
    elif taken:
        st.session_state[key] = taken[0]


def put(key: str, param: str, value: Any, default: Any = None) -> None:
    """Write the value of the widget ``key`` to ``?param=`` (a list as ``?param=a&param=b``);
    drop it at the default."""
    written = st.session_state.setdefault(WRITTEN, {})
    if value == default or value is None or value == "" or value == []:
        written[key] = []
        if param in st.query_params:
            del st.query_params[param]
        return
    texts = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    written[key] = texts
    if st.query_params.get_all(param) != texts:
        st.query_params[param] = texts if isinstance(value, list | tuple) else texts[0]


def bound(key: str, param: str, draw: Callable[[], Any], *, default: Any = None,
          choices: Sequence[Any] | None = None, many: bool = False,
          cast: Callable[[str], Any] = str) -> Any:
    """``take``, then ``draw()`` (the widget, made with ``key``), then ``put``: its value."""
    take(key, param, choices=choices, many=many, cast=cast)
    value = draw()
    put(key, param, value, default)
    return value
