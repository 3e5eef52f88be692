"""The layout rules of ../shared/DESIGN.md: imports point down the layers, no import cycle, no
Streamlit under core/, and every core folder says in its docstring what lives there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each layer and the layers it may import (besides itself and ``core.config``).
ALLOWED = {
    "core.engine": set(),
    "core.runs": {"core.engine"},
    "core.store": {"core.runs", "core.engine"},
    "core.execution": {"core.store", "core.runs", "core.engine"},
    "core.analysis": {"core.store", "core.runs", "core.engine"},
    "core.present": {"core.analysis", "core.store", "core.runs", "core.engine"},
}
TOP = ("ui", "pages", "app", "cli")  # thin views and entry points: may import any core layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [*(ROOT / "core").rglob("*.py"), *(ROOT / "ui").rglob("*.py"),
             *(ROOT / "pages").glob("*.py"), ROOT / "app.py", ROOT / "cli.py"]
    return sorted(files)


MODULES = {module_name(p): p for p in source_files()}


def imports_of(path: Path) -> set[str]:
    """Every project module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in MODULES else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in ("core", "ui", "pages"))
    return found


def layer_of(module: str) -> str:
    if module == "core.config" or module == "core":
        return module
    if module.startswith("core."):
        return ".".join(module.split(".")[:2])
    return module.split(".")[0]


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_core_module_sits_in_a_layer() -> None:
    stray = [m for m in MODULES if m.startswith("core.")
             and layer_of(m) not in ALLOWED and m != "core.config"]
    assert not stray, f"modules outside the layers of DESIGN.md: {stray}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) in ALLOWED))
def test_imports_point_down(module: str) -> None:
    layer = layer_of(module)
    allowed = ALLOWED[layer] | {layer, "core.config", "core"}
    upward = sorted(i for i in GRAPH[module] if layer_of(i) not in allowed)
    assert not upward, f"{module} ({layer}) imports {upward}; allowed: {sorted(allowed)}"


def test_nothing_imports_pages_and_core_never_imports_ui() -> None:
    bad = [(m, i) for m, deps in GRAPH.items() for i in deps
           if i.startswith("pages") or (m.startswith("core") and i.startswith("ui"))]
    assert not bad


def test_no_streamlit_under_core() -> None:
    offenders = [m for m, p in MODULES.items() if m.startswith("core")
                 and any(isinstance(n, (ast.Import, ast.ImportFrom))
                         and any((getattr(n, "module", None) or a.name).startswith("streamlit")
                                 for a in n.names)
                         for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH) or [])}"


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(str(p.parent.relative_to(ROOT))
                                           for p in (ROOT / "core").rglob("__init__.py")))
def test_each_core_folder_says_what_lives_there(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 8, f"{package}/__init__.py needs a docstring"
