"""Project rule: no function or method in core/ is longer than 60 lines.

Length is ``end_lineno - lineno + 1`` of the ``def`` (decorators excluded, docstring included);
nested functions count on their own and as part of the function around them.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
MAX_LINES = 60


def long_functions(root: Path = CORE, limit: int = MAX_LINES) -> list[str]:
    """``"path:function lines"`` for every function under ``root`` longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    rel = path.relative_to(root.parent).as_posix()
                    found.append(f"{rel}:{node.name} {lines}")
    return found


def test_no_function_in_core_is_longer_than_60_lines() -> None:
    offenders = long_functions()
    assert not offenders, (f"functions longer than {MAX_LINES} lines in core/ (split them into "
                           "named steps):\n" + "\n".join(offenders))


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "core"
    pkg.mkdir()
    body = "\n".join("    x = 1" for _ in range(MAX_LINES))
    (pkg / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(pkg) == [f"core/m.py:long {MAX_LINES + 1}"]
