"""The activation-sparsity forms of the Launch page and the Activation sparsity page, under
``streamlit.testing.v1.AppTest``.

Launch: the "Activation sparsity" and "Parameter search" run kinds report every bad field (what is
wrong, what is allowed) and queue nothing; good values queue the runs without a dense baseline.
Activation sparsity page: an own search written through ``record.store_result`` renders as seed
003 does (params, actual sparsity, metric; CoreInfer / best / AVG with % of CoreInfer).
No worker is started (``LocalExecutor.ensure_workers`` is replaced by a recorder).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.execution.local import LocalExecutor
from core.present import tables
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.search import SearchSpec
from core.runs.results import ChildRun, RunResult
from core.store import published
from core.store.db import Store
from core.store.record import create_run, store_result
from tests.page_helpers import open_page, widget
from tests.tiny_assets import tiny_llama_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_llama_folder(tmp_path_factory.mktemp("act-page") / "tiny-model"))


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", str(path))
    monkeypatch.setattr(published, "FIGURES", tmp_path / "none.csv")
    monkeypatch.setattr(published, "TRIALS", tmp_path / "none-trials.csv")
    return path


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(LocalExecutor, "ensure_workers", lambda self: calls.append(1) or [])
    return calls


def own_runs(db: Path) -> list[tuple]:
    frame = Store(db).frame("SELECT kind, method, spec FROM runs WHERE origin = 'own' "
                            "ORDER BY id")
    return [(k, m, json.loads(s)) for k, m, s in frame.itertuples(index=False)]


def launch(kind: str) -> AppTest:
    at = open_page("pages/launch.py")
    widget(at.radio, "Run kind").set_value(kind).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plotly_values(values: object) -> list[float]:
    """A trace's numbers from a figure's JSON (plotly writes arrays as typed base64)."""
    if isinstance(values, dict):
        raw = base64.b64decode(values["bdata"])
        return np.frombuffer(raw, dtype=np.dtype(values["dtype"])).tolist()
    return list(values)


def problems_of(at: AppTest) -> list[str]:
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert message.startswith("Nothing was queued.")
    return [line[2:] for line in message.splitlines() if line.startswith("- ")]


# -- Launch: parameter search ------------------------------------------------------------------
def test_search_form_reports_every_bad_field(db: Path, workers: list[int]) -> None:
    at = launch("Parameter search")
    widget(at.text_input, "Model name or folder").set_value("./nope/model")
    widget(at.text_input, "lm-eval task(s), comma separated").set_value("sb_everyday, nope_zz")
    widget(at.number_input, "Goal (mean kept fraction)").set_value(0.0)
    widget(at.text_input, "Sum weights (comma separated)").set_value("0.2, abc")
    widget(at.number_input, "Top-k").set_value(0)
    widget(at.text_input, "Block range (optional)").set_value("5,2")
    at.run()
    widget(at.button, "Queue search").click().run()
    problems = problems_of(at)
    expected = {"Model": "does not exist", "Task 'nope_zz'": "is not an lm-eval task",
                "Goal": "0.0 is not a number above 0 and below 1",
                "Sum weights": "'abc' is not a number; give comma-separated numbers",
                "Top-k": "0 is not a whole number between 1", "Block range": "0 <= start < end"}
    for field, part in expected.items():
        hits = [p for p in problems if p.startswith(field)]
        assert len(hits) == 1 and part in hits[0], (field, problems)  # said once, worded
    assert len(problems) == len(expected), problems
    assert not own_runs(db) and not workers and not at.success


def test_search_form_queues_one_search_per_task(db: Path, workers: list[int],
                                                model_dir: str) -> None:
    at = launch("Parameter search")
    widget(at.text_input, "Model name or folder").set_value(model_dir)
    widget(at.text_input, "lm-eval task(s), comma separated").set_value(
        "sb_everyday, sb_wiki_next")
    widget(at.radio, "Goal").set_value("Relative to CoreInfer's measured kept fraction").run()
    widget(at.number_input, "Factor of CoreInfer's kept fraction").set_value(0.9)
    widget(at.text_input, "Sum weights (comma separated)").set_value("0.2, 0.5")
    widget(at.number_input, "Search samples").set_value(10)
    at.run()
    widget(at.button, "Queue search").click().run()
    assert not at.error, [e.value for e in at.error]
    runs = own_runs(db)
    assert [(k, m) for k, m, _ in runs] == [("search", "sparsity-levels")] * 2  # no dense run
    assert [s["task"] for _, _, s in runs] == ["sb_everyday", "sb_wiki_next"]
    spec = runs[0][2]
    assert (spec["goal_factor"], spec["sum_weights"], spec["n_search"]) == (0.9, [0.2, 0.5], 10)
    assert spec["model"] == model_dir
    assert len(at.success) == 2 and "parameter search on sb_everyday" in at.success[0].value
    assert workers == [1]


# -- Launch: activation run --------------------------------------------------------------------
def test_activation_form_validates_then_queues(db: Path, workers: list[int],
                                               model_dir: str) -> None:
    at = launch("Activation sparsity")
    widget(at.text_input, "Model name or folder").set_value(model_dir)
    widget(at.radio, "Method").set_value("Sparsity levels").run()
    widget(at.text_input, "Levels (kept fraction per converted block)").set_value("0.4, x")
    widget(at.text_input, "lm-eval tasks (comma separated)").set_value("")
    at.run()
    widget(at.button, "Queue activation run").click().run()
    problems = problems_of(at)
    assert problems[0].startswith("Levels: 'x' is not a number")
    assert any(p.startswith("Evaluation: choose at least one lm-eval task") for p in problems)
    assert len(problems) == 2, problems
    assert not own_runs(db) and not workers

    widget(at.text_input, "Levels (kept fraction per converted block)").set_value("0.4, 0.5")
    widget(at.text_input, "lm-eval tasks (comma separated)").set_value("sb_everyday")
    at.run()
    widget(at.button, "Queue activation run").click().run()
    assert not at.error, [e.value for e in at.error]
    (kind, method, spec), = own_runs(db)
    assert (kind, method, spec["levels"], spec["tasks"]) == (
        "activation", "sparsity-levels", [0.4, 0.5], ["sb_everyday"])
    assert "sparsity levels 0.4, 0.5" in at.success[0].value and workers == [1]


# -- the Activation sparsity page on an own search -----------------------------------------------
def store_search(db: Path, model: str, coreinfer_score: float = 0.5) -> int:
    """An own search stored exactly as a finished search run stores it."""
    store = Store(db).init()
    spec = SearchSpec(model=model, task="sb_everyday", goal=0.4, sum_weights=[0.2, 0.6])
    run_id = create_run(store, spec, status="running")
    trials = [
        {"trial": 1, "params": [0.2, 0.8, 0.31, 100], "levels": [0.38, 0.42],
         "actual_sparsity": 0.396, "metric": "acc", "value": 0.55, "n_samples": 100},
        {"trial": 2, "params": [0.6, 0.4, 0.27, 100], "levels": [0.44, 0.36],
         "actual_sparsity": 0.403, "metric": "acc", "value": 0.6, "n_samples": 100},
    ]
    children = []
    for config, score, actual, extra in (
            ("CoreInfer", coreinfer_score, 0.4, {"method": "coreinfer", "sparsity": 0.4}),
            ("best", 0.55, 0.398, {"method": "sparsity-levels", "levels": [0.44, 0.36],
                                   "trial": 2}),
            ("AVG", 0.45, 0.401, {"method": "sparsity-levels", "levels": [0.41, 0.39]})):
        child = ActivationSpec(model=model, tasks=["sb_everyday"], metric="acc", goal=0.4,
                               config=config, **extra)
        levels = extra.get("levels", [0.4, 0.4])
        children.append(ChildRun(
            child,
            [{"kind": "task", "dataset": "sb_everyday", "metric": "acc", "value": score},
             {"kind": "activation", "dataset": "sb_everyday", "metric": "actual_sparsity",
              "value": actual}],
            [row for b, level in enumerate(levels) for row in (
                {"block": b, "layer": "ffn", "stat": "configured_fraction", "value": level},
                {"block": b, "layer": "ffn", "stat": "kept_fraction", "value": level - 0.01})]))
    store_result(store, run_id, RunResult(trials=trials, children=children))
    return run_id


def test_activation_page_renders_an_own_search(db: Path, model_dir: str) -> None:
    run_id = store_search(db, model_dir)
    at = open_page("pages/activation_sparsity.py")
    summary = at.dataframe[0].value
    assert summary["Task"].tolist() == ["sb_everyday"]
    assert summary["CoreInfer"].tolist() == [tables.format_value(0.5, "score")]
    assert summary["Best %"].tolist() == ["110.00%"]  # 0.55 / 0.5, from the stored scores
    assert summary["AVG %"].tolist() == ["90.00%"]
    assert "goal 0.4 · Own runs" in at.selectbox[0].value
    trials = at.dataframe[1].value
    assert list(trials.columns) == ["Params", "Actual sparsity", "Accuracy"]
    assert trials["Params"].tolist() == ["[0.2, 0.8, 0.31, 100]", "[0.6, 0.4, 0.27, 100]"]
    assert trials["Actual sparsity"].tolist() == ["0.396", "0.403"]
    finals = at.dataframe[2].value
    assert finals["Config"].tolist() == ["CoreInfer", "Best (config 2)", "AVG"]
    assert finals["Actual sparsity"].tolist() == ["0.400", "0.398", "0.401"]  # measured
    assert finals["% of CoreInfer"].tolist() == ["100.00%", "110.00%", "90.00%"]
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # % of CoreInfer, the search scatter, the per-block levels
    levels = json.loads(charts[2].proto.spec)
    names = [trace["name"] for trace in levels["data"]]
    assert names[:2] == ["CoreInfer: configured", "CoreInfer: measured"]
    assert "Best (config 2): configured" in names and "AVG: configured" in names
    avg = next(t for t in levels["data"] if t["name"] == "AVG: configured")
    assert plotly_values(avg["y"]) == pytest.approx([0.41, 0.39])
    measured = next(t for t in levels["data"] if t["name"] == "AVG: measured")
    assert plotly_values(measured["y"]) == pytest.approx([0.40, 0.38])
    assert not at.exception
    assert run_id


def test_activation_page_lists_own_runs_outside_a_search(db: Path, model_dir: str) -> None:
    store = Store(db).init()
    spec = ActivationSpec(model=model_dir, method="coreinfer", sparsity=0.3,
                          tasks=["sb_everyday"])
    run_id = create_run(store, spec, status="running")
    store_result(store, run_id, RunResult(metrics=[
        {"kind": "task", "dataset": "sb_everyday", "metric": "acc_norm", "value": 0.525},
        {"kind": "activation", "dataset": "sb_everyday", "metric": "actual_sparsity",
         "value": 0.281},
        {"kind": "activation", "dataset": "-", "metric": "actual_sparsity", "value": 0.281}]))
    at = open_page("pages/activation_sparsity.py")
    assert len(at.dataframe) == 1  # no search, so no CoreInfer comparison row either
    table = at.dataframe[0].value
    assert table["Run"].tolist() == [str(run_id)]
    assert table["Details"].tolist() == [f"runs?run={run_id}"]  # a link to the run's details
    assert table["Method"].tolist() == ["CoreInfer"]
    assert table["Actual sparsity"].tolist() == ["0.281"]  # measured, not the 0.3 parameter
    assert table["Parameters"].iloc[0].startswith("kept fraction 0.3 · token sparsity 0.2")
    assert not at.exception


def test_two_own_searches_of_one_goal_are_two_rows(db: Path, model_dir: str) -> None:
    """Each own search is compared with its own CoreInfer run, and both are listed."""
    first = store_search(db, model_dir)
    second = store_search(db, model_dir, coreinfer_score=0.4)
    store = Store(db)
    finals = tables.final_rows(tables.load_metrics(store, "task"),
                               tables.load_metrics(store, "activation"))
    shown = tables.final_summary(finals).display()
    assert shown["Source"].tolist() == [f"Own runs: search run {first}",
                                        f"Own runs: search run {second}"]
    assert shown["Best %"].tolist() == ["110.00%", "137.50%"]  # 0.55/0.5 and 0.55/0.4
    assert shown["AVG %"].tolist() == ["90.00%", "112.50%"]
