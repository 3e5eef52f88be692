"""Export a displayed table exactly as shown: CSV text and a GitHub pipe table (no extra deps)."""

from __future__ import annotations

import pandas as pd


def _cell(value: object) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def to_csv(df: pd.DataFrame) -> str:
    """The table as CSV text (header row, no index column)."""
    return df.to_csv(index=False, lineterminator="\n")


def _escape(text: str) -> str:
    """Make a cell safe inside a pipe table: escape pipes, keep it on one line."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """The table as a GitHub-flavoured Markdown pipe table (header, separator, one line a row)."""
    header = [_escape(str(c)) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_escape(_cell(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def parse_markdown(text: str) -> pd.DataFrame:
    """Read a pipe table written by :func:`to_markdown` back into a frame of strings."""
    rows = [_split(line) for line in text.strip().splitlines() if line.strip()]
    if len(rows) < 2:
        raise ValueError("not a pipe table: it needs a header and a separator line")
    header, body = rows[0], rows[2:]
    return pd.DataFrame(body, columns=header, dtype=object)


def _split(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") else inner
    cells, current, escaped = [], [], False
    for char in inner:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    cells.append("".join(current).strip())
    return cells
