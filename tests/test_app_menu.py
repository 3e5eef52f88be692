"""Every page of the menu hands over to app.py when Streamlit runs it alone (see
``ui.components.use_app_menu``; the browser test opens a page URL first to see it work)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def menu_pages() -> list[str]:
    return re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text())


def test_every_menu_page_calls_use_app_menu_before_drawing() -> None:
    pages = menu_pages()
    assert len(pages) >= 8
    assert sorted(pages) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py")
                                   if not p.name.startswith("_"))
    for page in pages:
        tree = ast.parse((ROOT / page).read_text())
        calls = [node.value.func for node in tree.body
                 if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)]
        names = [c.id if isinstance(c, ast.Name) else getattr(c, "attr", "") for c in calls]
        assert names and names[0] == "use_app_menu", (page, names[:3])


def test_url_paths_are_the_file_names() -> None:
    """Streamlit's legacy mode looks a first-visited URL up by file name: a URL path that differs
    from its page's file name would show 'Page not found' before app.py takes over."""
    pages = re.findall(r'st\.Page\("pages/([a-z_]+)\.py"(.*?)\)', (ROOT / "app.py").read_text(),
                       re.S)
    assert len(pages) == len(menu_pages())
    for stem, rest in pages:
        path = re.search(r'url_path="([^"]+)"', rest)
        assert path is None or path.group(1) == stem, (stem, path and path.group(1))
