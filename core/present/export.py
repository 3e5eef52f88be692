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


# -- LaTeX (booktabs) ------------------------------------------------------------------------------
#: Characters LaTeX treats specially, and characters outside plain ASCII that the tables use, with
#: their LaTeX spelling.  Every spelling is unambiguous (a literal backslash, ``$``, ``{`` and ``}``
#: are escaped), so :func:`parse_latex` maps each one back to the character exactly.
LATEX_ESCAPES: dict[str, str] = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "—": r"\textemdash{}", "–": r"\textendash{}", "−": r"$-$", "Δ": r"$\Delta$",
    "×": r"$\times$", "·": r"$\cdot$", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$",
    "→": r"$\rightarrow$", "…": r"\ldots{}",
}
_UNESCAPES = {latex: char for char, latex in LATEX_ESCAPES.items()}
_LATEX_TOKEN = None  # compiled lazily (see _latex_token)


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that typesets it literally (one line: newlines become spaces)."""
    text = text.replace("\r", " ").replace("\n", " ")
    return "".join(LATEX_ESCAPES.get(char, char) for char in text)


def latex_unescape(text: str) -> str:
    """The inverse of :func:`latex_escape`."""
    return _latex_token().sub(lambda m: _UNESCAPES[m.group(0)], text)


def _latex_token():  # noqa: ANN202 - a compiled pattern
    global _LATEX_TOKEN
    if _LATEX_TOKEN is None:
        import re

        spellings = sorted(_UNESCAPES, key=len, reverse=True)  # longest first
        _LATEX_TOKEN = re.compile("|".join(re.escape(s) for s in spellings))
    return _LATEX_TOKEN


def to_latex(df: pd.DataFrame, numeric: tuple[str, ...] | list[str] = (),
             caption: str | None = None, label: str | None = None) -> str:
    """The table as a LaTeX ``tabular`` with booktabs rules (``\\usepackage{booktabs}``).

    Columns named in ``numeric`` are right-aligned, the others left-aligned.  With a caption (or
    label) the tabular is wrapped in a ``table`` float.  Every cell is escaped with
    :func:`latex_escape`, so the text reads exactly as shown on the page.
    """
    spec = "".join("r" if c in set(numeric) else "l" for c in df.columns) or "l"
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False, name=None):
        lines.append(" & ".join(latex_escape(_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(lines) + "\n"
    head = [r"\begin{table}[htbp]", r"\centering"]
    if caption is not None:
        head.append(f"\\caption{{{latex_escape(caption)}}}")
    if label is not None:
        head.append(f"\\label{{{label}}}")
    return "\n".join([*head, *lines, r"\end{table}"]) + "\n"


def parse_latex(text: str) -> pd.DataFrame:
    """Read a tabular written by :func:`to_latex` back into a frame of strings (the header row
    between ``\\toprule`` and ``\\midrule``, body rows up to ``\\bottomrule``)."""
    lines = [line.strip() for line in text.strip().splitlines()]
    try:
        top, mid, bottom = (lines.index(r"\toprule"), lines.index(r"\midrule"),
                            lines.index(r"\bottomrule"))
    except ValueError as exc:
        raise ValueError("not a booktabs tabular: \\toprule, \\midrule and \\bottomrule are "
                         "needed") from exc
    header = _latex_row(" ".join(lines[top + 1:mid]))
    body = [_latex_row(line) for line in lines[mid + 1:bottom] if line]
    return pd.DataFrame(body, columns=header, dtype=object)


def _latex_row(line: str) -> list[str]:
    if not line.endswith(r"\\"):
        raise ValueError(f"a tabular row must end with \\\\: {line!r}")
    line = line[:-2]
    cells, current, i = [], [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):  # an escape: keep both characters
            current.append(line[i:i + 2])
            i += 2
        elif line[i] == "&":
            cells.append(latex_unescape("".join(current).strip()))
            current = []
            i += 1
        else:
            current.append(line[i])
            i += 1
    cells.append(latex_unescape("".join(current).strip()))
    return cells


def cell_number(text: str) -> float | None:
    """The number a displayed cell shows ('6.42', '+25.45%', '78.13%', '-0.01'), None for text
    ('diverged', 'collapsed', 'baseline', '—', '')."""
    cleaned = str(text).strip().rstrip("%").replace("−", "-")
    try:
        return float(cleaned)
    except ValueError:
        return None
