"""The run name, notes and tags fields of every launch form, and the Runs page's edit form.

What is typed is checked by ``core.store.meta`` (the problems name their field); it is stored as
typed and always shown as plain text, never as Markdown or HTML.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.store import meta
from core.store.meta import RunMeta

NAME = "Run name"
NOTES = "Notes"
TAGS = "Tags (comma-separated)"
TAGS_HELP = (f"At most {meta.MAX_TAGS} tags of up to {meta.TAG_CHARS} letters, digits, spaces "
             f"and {' '.join(meta.TAG_EXTRA.strip())}; the Runs list filters by them.")


def meta_fields(key: str, current: RunMeta | None = None, container: Any = st
                ) -> tuple[str, str, str]:
    """The three fields (in ``container``), filled with ``current``; the texts typed."""
    current = current or RunMeta()
    left, right = container.columns([1, 1])
    name = left.text_input(NAME, current.name or "", key=f"{key}-name",
                           placeholder="optional", help=f"At most {meta.NAME_CHARS} characters.")
    tags = right.text_input(TAGS, ", ".join(current.tags), key=f"{key}-tags",
                            placeholder="e.g. paper, llama-7b", help=TAGS_HELP)
    notes = container.text_area(NOTES, current.notes or "", key=f"{key}-notes", height=80,
                                placeholder="optional",
                                help=f"Plain text, at most {meta.NOTES_CHARS} characters.")
    return name, notes, tags


def checked(name: str, notes: str, tags: str, problems: list[str]) -> RunMeta | None:
    """The checked metadata of the typed texts; None (and ``problems`` extended) when bad."""
    found = meta.problems(name, notes, meta.split_tags(tags))
    if found:
        problems.extend(found)
        return None
    return meta.check(name, notes, meta.split_tags(tags))


def meta_inputs(key: str, problems: list[str]) -> RunMeta | None:
    """A launch form's name, notes and tags under their own subheader."""
    st.subheader("Name, notes and tags (optional)")
    return checked(*meta_fields(key), problems)
