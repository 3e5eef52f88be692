"""A run's name, notes and tags: what people call a run, kept beside its spec (never in it, so
they change neither the spec's hash nor which runs are identical).

``check`` validates them; a bad value raises ``ValueError`` naming the field, what is wrong and
what is allowed.  The values are stored as given (trimmed); pages show them as plain text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

NAME_CHARS = 120
NOTES_CHARS = 5000
TAG_CHARS = 40
MAX_TAGS = 20
#: Besides letters and digits, the characters a tag may hold.
TAG_EXTRA = "-_.:/ "
#: The metadata fields, as forms and messages name them.
FIELDS = {"name": "Run name", "notes": "Notes", "tags": "Tags"}


@dataclass(frozen=True)
class RunMeta:
    """A run's name, notes and tags (None / () when it has none)."""

    name: str | None = None
    notes: str | None = None
    tags: tuple[str, ...] = ()

    def given(self) -> tuple[str, ...]:
        """The fields that hold a value ('name', 'notes', 'tags')."""
        return tuple(f for f in FIELDS if getattr(self, f))

    def row(self) -> list[Any]:
        """The ``runs`` column values (name, notes, tags): no tags is NULL."""
        return [self.name, self.notes, list(self.tags) or None]


def split_tags(text: str | Iterable[str] | None) -> list[str]:
    """Tags typed as comma-separated text (or several such texts): the non-empty parts."""
    if text is None:
        return []
    texts = [text] if isinstance(text, str) else list(text)
    return [part for item in texts for part in str(item).split(",") if part.strip()]


def tag_problem(tag: str) -> str | None:
    """What is wrong with one trimmed tag; None when it is fine."""
    allowed = (f"tags are 1 to {TAG_CHARS} characters of letters, digits, spaces and "
               f"{' '.join(TAG_EXTRA.strip())}")
    if not 1 <= len(tag) <= TAG_CHARS:
        return f"Tags: {tag!r} has {len(tag)} characters; {allowed}."
    bad = sorted({c for c in tag if not (c.isalnum() or c in TAG_EXTRA)})
    if bad:
        return f"Tags: {tag!r} holds {' '.join(repr(c) for c in bad)}; {allowed}."
    return None


def unique_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Trimmed tags without duplicates (compared ignoring case; the first spelling stays)."""
    seen: dict[str, str] = {}
    for tag in tags:
        seen.setdefault(tag.strip().casefold(), tag.strip())
    return tuple(seen.values())


def problems(name: str | None = None, notes: str | None = None,
             tags: Iterable[str] = ()) -> list[str]:
    """Every problem with the given name, notes and tags, each naming its field."""
    found = []
    if name is not None and len(name.strip()) > NAME_CHARS:
        found.append(f"Run name: {len(name.strip())} characters is too long; at most "
                     f"{NAME_CHARS} characters.")
    if notes is not None and len(notes) > NOTES_CHARS:
        found.append(f"Notes: {len(notes)} characters is too long; at most {NOTES_CHARS} "
                     "characters.")
    cleaned = unique_tags(tags)
    found += [p for p in map(tag_problem, cleaned) if p]
    if len(cleaned) > MAX_TAGS:
        found.append(f"Tags: {len(cleaned)} tags given; at most {MAX_TAGS} (duplicates "
                     "count once).")
    return found


def check(name: str | None = None, notes: str | None = None,
          tags: Iterable[str] = ()) -> RunMeta:
    """The checked metadata: the name trimmed, notes kept as written, tags trimmed without
    duplicates; empty values are None / ().  Raises ``ValueError`` listing every problem."""
    tags = list(tags)
    found = problems(name, notes, tags)
    if found:
        raise ValueError(" ".join(found))
    return RunMeta(name=(name or "").strip() or None,
                   notes=notes if notes and notes.strip() else None,
                   tags=unique_tags(tags))


def merged(old: RunMeta, new: RunMeta) -> tuple[RunMeta, tuple[str, ...], tuple[str, ...]]:
    """``new`` applied to a run that has ``old`` without overwriting anything: a name or notes
    only where the run has none, tags added to its own (while they fit in ``MAX_TAGS``).
    Returns the result, the fields it changed and the given fields it kept as they were."""
    result, changed, kept = old, [], []
    for field in ("name", "notes"):
        value = getattr(new, field)
        if value and not getattr(old, field):
            result, changed = replace(result, **{field: value}), [*changed, field]
        elif value and value != getattr(old, field):
            kept.append(field)
    tags = unique_tags([*old.tags, *new.tags])
    if len(tags) > len(old.tags):
        if len(tags) <= MAX_TAGS:
            result, changed = replace(result, tags=tags), [*changed, "tags"]
        else:
            kept.append("tags")
    return result, tuple(changed), tuple(kept)


def from_row(name: Any, notes: Any, tags: Any) -> RunMeta:
    """The metadata of a stored row (NULLs, NaN and numpy arrays as the store gives them)."""
    return RunMeta(name=text_or_none(name), notes=text_or_none(notes), tags=tag_tuple(tags))


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def tag_tuple(value: Any) -> tuple[str, ...]:
    """A stored tags value (a list, a numpy array, NULL, NaN) as a tuple of text."""
    if value is None or isinstance(value, float | str):
        return ()
    try:
        return tuple(str(v) for v in value)
    except TypeError:  # pd.NA and other scalars
        return ()
