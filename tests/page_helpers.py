"""Driving the dashboard under ``streamlit.testing.v1.AppTest`` as a visitor does."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def open_page(page: str) -> AppTest:
    """The app as a visitor opens it (app.py first), then ``page`` from the menu."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page(str(ROOT / page)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget(widgets, label: str):  # noqa: ANN001, ANN201
    """The one widget of ``widgets`` labelled ``label`` (fails naming the labels present)."""
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget {label!r}; have {[w.label for w in widgets]}"
    return found[0]
