"""The Runs list as a tracking table (order, method and model filters, the view in the URL,
ticked runs compared, run again or archived), and the URL state of the result pages."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest
from streamlit.testing.v1 import AppTest

from core.present import run_list
from core.store.db import Store
from tests.page_helpers import ROOT, TIMEOUT, open_page, widget
from tests.test_launch_pages import assets, db, make_run, store, workers  # noqa: F401

RUNS = str(ROOT / "pages/runs.py")


def _ppl(store: Store, run_id: int, value: float | None) -> None:  # noqa: F811
    store.add_metrics(run_id, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                                "value": value, "status": "ok" if value else "missing"}])


@pytest.fixture
def many(store: Store, assets: dict[str, str]) -> dict[int, float | None]:  # noqa: F811
    """60 done runs (two pages), perplexity rising with the run id except one without."""
    values = {}
    for n in range(60):
        run_id = make_run(store, assets, "done", "magnitude" if n % 2 else "wanda")
        values[run_id] = None if n == 30 else 10.0 + n
        _ppl(store, run_id, values[run_id])
    return values


def _param(at: AppTest, name: str) -> list[str]:
    """A query parameter's values (AppTest gives a single one as a string)."""
    value = at.query_params[name]
    return [value] if isinstance(value, str) else list(value)


def _opened(query: dict[str, object], page: str = RUNS) -> AppTest:
    """The app opened on ``page`` with these query parameters, as a shared link opens."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.query_params.update(query)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_list_sorts_every_run_by_a_key_result_before_paging(
        db: Path, workers: list[int], many: dict[int, float | None]) -> None:  # noqa: F811
    at = open_page("pages/runs.py")
    order = widget(at.selectbox, "Sort by")
    assert order.options[:2] == ["Newest first", "Oldest first"]
    assert "PPL WT2 (lowest first)" in order.options
    order.set_value("PPL WT2").run()
    shown = at.dataframe[0].value
    ranked = sorted((v, r) for r, v in many.items() if v is not None)
    assert shown["Run"].tolist() == [r for _, r in ranked[:50]]  # the lowest of all 60 first
    assert shown["PPL WT2"].tolist() == [v for v, _ in ranked[:50]]
    assert _param(at, "sort") == ["PPL WT2"]
    widget(at.number_input, "Page").set_value(2).run()
    last = at.dataframe[0].value["Run"].tolist()
    assert last[-1] == next(r for r, v in many.items() if v is None)  # no number: last
    widget(at.selectbox, "Sort by").set_value("Oldest first").run()  # back to the first page
    assert at.dataframe[0].value["Run"].tolist() == sorted(many)[:50]
    assert "page" not in at.query_params


def test_method_and_model_filters_are_kept_in_the_address(
        db: Path, workers: list[int], many: dict[int, float | None]) -> None:  # noqa: F811
    at = open_page("pages/runs.py")
    widget(at.multiselect, "Method").set_value(["magnitude"]).run()
    shown = at.dataframe[0].value
    assert len(shown) == 30 and set(shown["Method"]) == {"Magnitude 50%"}  # no calibration
    assert _param(at, "method") == ["magnitude"]
    models = widget(at.multiselect, "Model").options
    assert models == ["tiny-model"]
    widget(at.multiselect, "Model").set_value(models).run()
    assert len(at.dataframe[0].value) == 30 and _param(at, "model") == ["tiny-model"]

    shared = _opened({"method": "wanda", "sort": "PPL WT2", "q": "wanda", "page": "1"})
    assert widget(shared.multiselect, "Method").value == ["wanda"]
    assert widget(shared.selectbox, "Sort by").value == "PPL WT2"
    assert widget(shared.text_input, "Search").value == "wanda"
    rows = shared.dataframe[0].value
    assert {m.split(" · ")[0] for m in rows["Method"]} == {"Wanda 50%"}
    numbers = rows["PPL WT2"].dropna().tolist()
    assert numbers == sorted(numbers) and rows["PPL WT2"].iloc[:len(numbers)].notna().all()
    # a link naming a method or order this file does not have still opens, unfiltered
    odd = _opened({"method": "nonsense", "sort": "PPL C9", "page": "99"})
    assert widget(odd.multiselect, "Method").value == []
    assert widget(odd.selectbox, "Sort by").value == "Newest first"
    assert len(odd.dataframe[0].value) == 50


def test_ticked_runs_open_side_by_side_on_compare(
        db: Path, workers: list[int], many: dict[int, float | None]) -> None:  # noqa: F811
    at = open_page("pages/runs.py")
    assert any("Tick runs in the list" in c.value for c in at.caption)
    first, second = sorted(many)[-2:]
    at.session_state["runs-ticked"] = [second, first]  # what ticking two rows leaves
    at.run()
    assert any(f"run {second}, run {first}" in m.value for m in at.markdown)
    link = next(p for p in at.page_link if p.value == "Compare")
    query = parse_qs(link.proto.query_string)
    assert link.proto.page == "compare" and query == {"runs": [str(second), str(first)]}
    followed = _opened(query, str(ROOT / "pages/compare.py"))  # the link, as the browser follows
    picker = widget(followed.multiselect, "Runs (the first is the reference)")
    assert picker.value == [second, first]
    assert _param(followed, "runs") == [str(second), str(first)]


def test_ticked_runs_archived_and_run_again(
        db: Path, workers: list[int], store: Store, many: dict[int, float | None]  # noqa: F811
) -> None:
    at = open_page("pages/runs.py")
    old = sorted(many)[-3:-1]  # on the page shown (ticks are of rows shown)
    at.session_state["runs-ticked"] = old
    at.run()
    widget(at.button, "Archive").click().run()
    assert not at.exception
    assert not set(old) & set(at.dataframe[0].value["Run"])
    assert store.frame("SELECT count(*) FROM runs WHERE archived_at IS NOT NULL").iloc[0, 0] == 2
    at.session_state["runs-ticked"] = [max(many)]
    at.run()
    widget(at.button, "Re-run").click().run()
    assert not at.exception
    # (the copy of a pruned run queues its dense baseline too, when there is none)
    newest = int(store.frame("SELECT max(id) FROM runs WHERE method <> 'dense'").iloc[0, 0])
    assert newest > max(many)
    assert any(f"Queued run {newest} (a fresh copy of run {max(many)})" in s.value
               for s in at.success)
    assert widget(at.selectbox, "Run").value == newest


def test_compare_opens_the_runs_its_address_names(
        db: Path, workers: list[int], many: dict[int, float | None]) -> None:  # noqa: F811
    ids = sorted(many)
    at = _opened({"runs": [str(ids[5]), str(ids[1]), "999", "x"]}, str(ROOT / "pages/compare.py"))
    picker = widget(at.multiselect, "Runs (the first is the reference)")
    assert picker.value == [ids[5], ids[1]]  # unknown ids are dropped
    picker.set_value([ids[3]]).run()
    assert _param(at, "runs") == [str(ids[3])]


def test_result_page_filters_are_kept_in_the_address(
        db: Path, workers: list[int], many: dict[int, float | None]) -> None:  # noqa: F811
    at = _opened({"method": "magnitude", "origin": "Own runs"},
                 str(ROOT / "pages/perplexity.py"))
    assert widget(at.sidebar.multiselect, "Method").value == ["magnitude"]
    assert widget(at.sidebar.radio, "Origin").value == "Own runs"
    table = at.dataframe[0].value
    assert set(table["Method"]) == {"Magnitude 50%"}
    # own rows link to their details on the Runs page
    assert table["Details"].tolist() == [f"runs?run={r}" for r in table["Run"]]
    widget(at.sidebar.multiselect, "Method").set_value([]).run()
    assert "method" not in at.query_params


def test_sort_choices_follow_the_number_columns() -> None:
    import pandas as pd

    runs = pd.DataFrame({"Run": [3, 2, 1], "PPL WT2": [12.0, None, 11.0],
                         run_list.ZERO_SHOT: [0.5, 0.6, None]})
    assert run_list.sort_choices(runs) == ["Newest first", "Oldest first", "PPL WT2",
                                           "Zero-shot avg"]
    assert run_list.sorted_runs(runs, "PPL WT2")["Run"].tolist() == [1, 3, 2]
    assert run_list.sorted_runs(runs, run_list.ZERO_SHOT)["Run"].tolist() == [2, 3, 1]
    assert run_list.sort_text("Retention") == "Retention (highest first)"


def test_archived_runs_leave_the_result_pages_until_restored(
        db: Path, workers: list[int], store: Store, many: dict[int, float | None]  # noqa: F811
) -> None:
    gone = max(many)
    before = store.results_version()
    store.archive([gone])
    assert store.results_version() != before  # the pages' caches see the change
    at = _opened({"origin": "Own runs"}, str(ROOT / "pages/perplexity.py"))
    runs = set(at.dataframe[0].value["Run"].astype(int))
    assert gone not in runs and len(runs) == len(many) - 1
    listed = _opened({"archived": "True"})  # the Runs list shows it, with its numbers
    row = listed.dataframe[0].value.set_index("Run").loc[gone]
    assert row["PPL WT2"] == many[gone] and bool(row["Archived"])
    store.restore([gone])
    at = _opened({"origin": "Own runs"}, str(ROOT / "pages/perplexity.py"))
    assert gone in set(at.dataframe[0].value["Run"].astype(int))
