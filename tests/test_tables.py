"""Unit tests of core.tables, core.export and core.charts on hand-made frames and stores."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.analysis import noise
from core.present import charts, export, tables
from core.store.db import Store
from core.store.record import create_run

WANDA_README = "Wanda README (Sun et al. 2023)"


def make_rows(*records: dict[str, Any]) -> pd.DataFrame:
    """Rows shaped like ``Store.metrics`` (defaults filled in), prepared as the pages do."""
    defaults = {"origin": "own", "source": None, "run_kind": "prune", "model": "m",
                "method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "spec": {},
                "run_status": "done", "kind": "perplexity", "dataset": "wikitext2",
                "metric": "ppl", "value": None, "stderr": None, "n_samples": None,
                "status": "ok", "raw": None, "note": None}
    rows = []
    for i, rec in enumerate(records):
        row = {**defaults, "run_id": i + 1, **rec}
        row["spec"] = json.dumps(row["spec"])
        rows.append(row)
    return tables.prepare(pd.DataFrame(rows))


def ppl(method: str, sparsity: float, value: float | None, **extra: Any) -> dict[str, Any]:
    pattern = extra.pop("pattern", "dense" if method == "dense" else "unstructured")
    return {"method": method, "sparsity": sparsity, "pattern": pattern, "value": value, **extra}


def published(**extra: Any) -> dict[str, Any]:
    return {"origin": "published", "source": "Paper A", **extra}


def cell(table: tables.Table, row: str, column: str, key: str = "Method") -> str:
    shown = table.display()
    return shown.loc[shown[key] == row, column].iloc[0]


# -- labels --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sparsity", "pattern", "method", "label"), [
    (0.3, "unstructured", "wanda", "30%"),
    (0.125, "unstructured", "wanda", "12.5%"),
    (0.5, "2:4", "wanda", "2:4"),
    (0.0, "dense", "dense", "Dense"),
])
def test_sparsity_label(sparsity: float, pattern: str, method: str, label: str) -> None:
    assert tables.sparsity_label(sparsity, pattern, method) == label


def test_row_labels_follow_the_seed() -> None:
    assert tables.row_label("dense", 0, "dense") == "Dense (Baseline)"
    assert tables.row_label("magnitude", 0.3, "unstructured") == "Magnitude 30%"
    assert tables.row_label("wanda", 0.5, "2:4") == "Wanda 2:4"
    assert tables.sparsity_fraction(None, "2:4") == 0.5


# -- (a) perplexity ------------------------------------------------------------------------------
def test_relative_change_against_dense() -> None:
    rows = make_rows(ppl("dense", 0, 5.12), ppl("wanda", 0.5, 6.42), ppl("magnitude", 0.5, 14.89))
    table = tables.perplexity_table(rows)
    delta = table.frame.set_index("Method")["Δ from dense"]
    assert delta["Wanda 50%"] == pytest.approx((6.42 - 5.12) / 5.12 * 100)
    assert cell(table, "Wanda 50%", "Δ from dense") == "+25.39%"
    assert cell(table, "Dense (Baseline)", "Δ from dense") == "baseline"
    assert cell(table, "Magnitude 50%", "PPL") == "14.89"
    assert tables.relative_change(110.0, 100.0) == pytest.approx(10.0)


def test_rows_ordered_like_seed_000() -> None:
    rows = make_rows(ppl("wanda", 0.5, 6.4), ppl("magnitude", 0.3, 5.7), ppl("dense", 0, 5.1),
                     ppl("wanda", 0.3, 5.5), ppl("magnitude", 0.5, 11.8))
    assert list(tables.perplexity_table(rows).display()["Method"]) == [
        "Dense (Baseline)", "Magnitude 30%", "Wanda 30%", "Magnitude 50%", "Wanda 50%"]


def test_diverged_is_shown_as_a_word_never_nan() -> None:
    rows = make_rows(ppl("dense", 0, 5.11), ppl("magnitude", 0.7, None, status="diverged"))
    table = tables.perplexity_table(rows)
    assert cell(table, "Magnitude 70%", "PPL") == "diverged"
    assert cell(table, "Magnitude 70%", "Δ from dense") == "diverged"
    assert math.isnan(table.frame.set_index("Method").loc["Magnitude 70%", "PPL"])
    text = export.to_csv(table.display()) + export.to_markdown(table.display())
    assert "nan" not in text.lower()


COLLAPSE_NOTE = ("perplexity 6,960,449 is at or above the vocabulary size (49,152): worse than "
                 "uniform guessing")


def collapsed_rows() -> pd.DataFrame:
    """Dense, Wanda 50% and a 95% magnitude run whose perplexity is above the vocabulary size."""
    return make_rows(ppl("dense", 0, 20.0), ppl("wanda", 0.5, 30.0),
                     ppl("magnitude", 0.95, 6960449.0, status="collapsed", note=COLLAPSE_NOTE))


def test_collapsed_is_shown_as_a_word_with_no_delta() -> None:
    """Issue 15: a perplexity above the vocabulary size read '+34,802,145%' from dense."""
    table = tables.perplexity_table(collapsed_rows())
    assert cell(table, "Magnitude 95%", "PPL") == tables.COLLAPSED == "collapsed"
    assert cell(table, "Magnitude 95%", "Δ from dense") == "collapsed"
    row = table.frame.set_index("Method").loc["Magnitude 95%"]
    assert math.isnan(row["PPL"]) and math.isnan(row["Δ from dense"])
    assert row["_status"] == "collapsed" and "6,960,449" in row["Note"]  # the value, as a note
    assert cell(table, "Wanda 50%", "Δ from dense") == "+50.00%"  # other rows unchanged


def test_a_collapsed_dense_run_gives_no_delta() -> None:
    rows = make_rows(ppl("dense", 0, 60000.0, status="collapsed"), ppl("wanda", 0.5, 30.0))
    table = tables.perplexity_table(rows)
    assert cell(table, "Dense (Baseline)", "PPL") == "collapsed"
    assert cell(table, "Wanda 50%", "Δ from dense") == ""
    assert "the dense baseline (run 1) collapsed" in cell(table, "Wanda 50%", "Note")


def test_collapsed_in_the_sparsity_grid() -> None:
    grid = tables.sparsity_grid(collapsed_rows(), "m", tables.OWN_GROUP)
    shown = grid.display().set_index("Method")
    assert shown.loc["Magnitude", "95% · WT2"] == "collapsed"
    assert math.isnan(grid.frame.set_index("Method").loc["Magnitude", "95% · WT2"])


def test_missing_value_is_a_dash_and_distinct_from_diverged() -> None:
    rows = make_rows(ppl("dense", 0, 5.0), ppl("wanda", 0.5, None, status="missing"),
                     ppl("magnitude", 0.5, None, status="diverged"))
    table = tables.perplexity_table(rows)
    assert cell(table, "Wanda 50%", "PPL") == tables.MISSING
    assert cell(table, "Magnitude 50%", "PPL") == tables.DIVERGED
    status = table.frame.set_index("Method")["_status"]
    assert status["Wanda 50%"] == "missing" and status["Magnitude 50%"] == "diverged"


def test_missing_dense_baseline_leaves_delta_blank_with_a_reason() -> None:
    rows = make_rows(ppl("wanda", 0.5, 11.86, model="OPT-6.7b"))
    table = tables.perplexity_table(rows)
    assert math.isnan(table.frame["Δ from dense"].iloc[0])
    assert cell(table, "Wanda 50%", "Δ from dense") == ""
    assert "no dense baseline" in cell(table, "Wanda 50%", "Note")


def test_baseline_comes_from_the_same_source_and_dataset() -> None:
    rows = make_rows(
        ppl("dense", 0, 10.0),                                  # own dense
        ppl("wanda", 0.5, 12.0, **published()),                 # published, no published dense
        ppl("dense", 0, 20.0, dataset="c4"),                    # own dense on another dataset
        ppl("wanda", 0.5, 15.0),                                # own pruned on wikitext2
    )
    frame = tables.perplexity_table(rows).frame
    own = frame[(frame["Origin"] == "Own run") & (frame["Method"] == "Wanda 50%")].iloc[0]
    pub = frame[frame["Origin"] == "Published"].iloc[0]
    assert own["Δ from dense"] == pytest.approx(50.0)
    assert own["_baseline_run"] == 1
    assert math.isnan(pub["Δ from dense"]) and "no dense baseline" in pub["Note"]


def test_unfinished_runs_and_other_metrics_are_not_tabled() -> None:
    rows = make_rows(ppl("dense", 0, 5.0), ppl("wanda", 0.5, 6.0, run_status="running"),
                     ppl("wanda", 0.5, 25.45, kind="perplexity_summary", metric="change_pct"))
    assert list(tables.perplexity_table(rows).display()["Method"]) == ["Dense (Baseline)"]


def test_published_repeats_are_shown_once() -> None:
    rows = make_rows(ppl("dense", 0, 5.0, spec={"table": "T1"}, **published()),
                     ppl("dense", 0, 5.0, spec={"table": "T2"}, **published()))
    assert len(tables.perplexity_table(rows).frame) == 1


# -- (b) dataset x sparsity grid -----------------------------------------------------------------
def test_sparsity_grid_layout_of_seed_004() -> None:
    recs = []
    for dataset, dense in (("wikitext2", 6.14), ("ptb", 11.18), ("c4", 9.45)):
        recs.append(ppl("dense", 0, dense, dataset=dataset, **published()))
        recs.append(ppl("sparsegpt", 0.1, dense + 0.02, dataset=dataset, **published()))
        recs.append(ppl("sparsellm", 0.5, dense + 5, dataset=dataset, pattern="2:4",
                        **published()))
    recs.append(ppl("sparsellm", 0.8, None, status="missing", **published()))
    grid = tables.sparsity_grid(make_rows(*recs), "m", "Paper A")
    shown = grid.display()
    assert list(shown.columns) == [
        "Method", "Dense · WT2", "Dense · PTB", "Dense · C4", "10% · WT2", "10% · PTB",
        "10% · C4", "2:4 · WT2", "2:4 · PTB", "2:4 · C4", "80% · WT2"]
    assert list(shown["Method"]) == ["Dense", "SparseGPT", "SparseLLM"]
    assert cell(grid, "SparseGPT", "10% · PTB") == "11.20"
    assert cell(grid, "SparseLLM", "80% · WT2") == tables.MISSING
    assert cell(grid, "SparseGPT", "2:4 · WT2") == ""
    assert grid.frame.set_index("Method").loc["SparseLLM", "2:4 · C4"] == pytest.approx(14.45)


def test_grid_rows_of_an_ablation_name_their_parameters_in_numeric_order() -> None:
    recs = [ppl("sparsellm", 0.7, 18 + b / 1000, spec={"alpha": a, "beta": b, "seqlen": 2048},
                **published()) for a, b in ((1, 10), (1, 5), (1, 0.1), (5, 0.1))]
    grid = tables.sparsity_grid(make_rows(*recs), "m", "Paper A")
    assert list(grid.display()["Method"]) == [  # only the varying settings, numbers by value
        "SparseLLM (alpha=1, beta=0.1)", "SparseLLM (alpha=1, beta=5)",
        "SparseLLM (alpha=1, beta=10)", "SparseLLM (alpha=5, beta=0.1)"]


# -- (c) zero-shot -------------------------------------------------------------------------------
SEED_000 = {  # per-task accuracies of seed 000 at 30% sparsity
    "dense": {"piqa": .7813, "hellaswag": .5710, "arc_easy": .7546, "boolq": .7933, "rte": .6390},
    "magnitude": {"piqa": .7840, "hellaswag": .5813, "arc_easy": .7597, "boolq": .7520,
                  "rte": .5776},
}


def zero_shot(method: str, scores: dict[str, float | None], run_id: int,
              **extra: Any) -> list[dict[str, Any]]:
    sparsity = 0.0 if method == "dense" else 0.3
    pattern = "dense" if method == "dense" else "unstructured"
    return [{"run_id": run_id, "kind": "zero_shot", "method": method, "sparsity": sparsity,
             "pattern": pattern, "dataset": task, "metric": "acc", "value": value,
             "status": "ok" if value is not None else "missing", **extra}
            for task, value in scores.items()]


def test_average_and_retention_match_seed_000() -> None:
    rows = make_rows(*zero_shot("dense", SEED_000["dense"], 1),
                     *zero_shot("magnitude", SEED_000["magnitude"], 2))
    table = tables.zero_shot_table(rows)
    frame = table.frame.set_index("Method")
    assert frame.loc["Dense (Baseline)", "Accuracy"] == pytest.approx(0.70784)
    assert frame.loc["Magnitude 30%", "Accuracy"] == pytest.approx(0.69092)
    assert frame.loc["Magnitude 30%", "Retention"] == pytest.approx(0.69092 / 0.70784)
    assert cell(table, "Magnitude 30%", "Accuracy") == "69.09%"
    assert cell(table, "Magnitude 30%", "Retention") == "97.61%"
    assert cell(table, "Dense (Baseline)", "Retention") == "100.00%"


def test_retention_uses_the_tasks_both_runs_have() -> None:
    dense = {"piqa": 0.8, "boolq": 0.6, "rte": 0.5}
    pruned = {"piqa": 0.6, "boolq": 0.3, "rte": None}
    rows = make_rows(*zero_shot("dense", dense, 1), *zero_shot("wanda", pruned, 2))
    table = tables.zero_shot_table(rows)
    wanda = table.frame.set_index("Method").loc["Wanda 30%"]
    assert wanda["Accuracy"] == pytest.approx(0.45)
    assert wanda["Retention"] == pytest.approx(0.45 / 0.7)
    assert wanda["Tasks"] == 2
    assert "2 of 3 tasks" in wanda["Note"] and "2 tasks shared" in wanda["Note"]
    assert tables.retention({"a": 0.5}, {"b": 0.5}) == (pytest.approx(math.nan, nan_ok=True), 0)


def test_printed_summaries_are_not_used() -> None:
    summary = {"run_id": 2, "kind": "zero_shot_summary", "method": "magnitude", "sparsity": 0.3,
               "dataset": "average", "metric": "acc", "value": 0.99}
    rows = make_rows(*zero_shot("dense", SEED_000["dense"], 1),
                     *zero_shot("magnitude", SEED_000["magnitude"], 2), summary)
    frame = tables.zero_shot_table(rows).frame.set_index("Method")
    assert frame.loc["Magnitude 30%", "Accuracy"] == pytest.approx(0.69092)


def test_no_dense_baseline_means_no_retention() -> None:
    table = tables.zero_shot_table(make_rows(*zero_shot("wanda", {"piqa": 0.7}, 1)))
    assert cell(table, "Wanda 30%", "Retention") == ""
    assert "no dense baseline" in cell(table, "Wanda 30%", "Note")


def test_per_task_breakdown_has_dense_and_each_method() -> None:
    rows = make_rows(*zero_shot("dense", SEED_000["dense"], 1),
                     *zero_shot("magnitude", SEED_000["magnitude"], 2))
    table = tables.per_task_table(rows, "m", "30%")
    shown = table.display()
    assert list(shown.columns) == ["Task", "Dense", "Magnitude"]
    assert list(shown["Task"]) == ["piqa", "hellaswag", "arc_easy", "boolq", "rte"]
    assert cell(table, "boolq", "Magnitude", key="Task") == "75.20%"


# -- (d) activation sparsity ---------------------------------------------------------------------
def final(config: str, value: float | None, run_id: int, goal: float = 0.4,
          **extra: Any) -> dict[str, Any]:
    spec = {"goal": goal, "config": config, **({"trial": 6} if config == "best" else {})}
    return {"run_id": run_id, "kind": "task", "dataset": "truthfulqa_gen", "metric": "bleu_max",
            "method": "coreinfer" if config == "CoreInfer" else "sparsity-levels",
            "pattern": "activation", "sparsity": None, "spec": spec, "value": value,
            "status": "ok" if value is not None else "missing", **published(**extra)}


def test_percent_of_coreinfer_is_computed_from_the_scores() -> None:
    printed = {**final("best", 104.6, 2), "kind": "search_summary", "metric": "pct_of_coreinfer"}
    finals = tables.final_rows(make_rows(final("CoreInfer", 6.33, 1), final("best", 6.627, 2),
                                         final("AVG", None, 3), printed))
    table = tables.final_table(finals)
    frame = table.frame.set_index("Config")
    assert frame.loc["Best (config 6)", "% of CoreInfer"] == pytest.approx(6.627 / 6.33 * 100)
    assert cell(table, "Best (config 6)", "% of CoreInfer", key="Config") == "104.69%"
    assert cell(table, "AVG", "Score", key="Config") == "no value"
    assert cell(table, "AVG", "% of CoreInfer", key="Config") == ""
    summary = tables.final_summary(finals).display().iloc[0]
    assert (summary["CoreInfer"], summary["Best %"], summary["AVG"]) == ("6.33", "104.69%",
                                                                         "no value")


def test_coreinfer_is_matched_on_the_same_goal() -> None:
    finals = tables.final_rows(make_rows(final("CoreInfer", 6.33, 1), final("AVG", 6.158, 2,
                                                                           goal=0.36),
                                         final("CoreInfer", 5.193, 3, goal=0.36)))
    table = tables.final_table(finals, goal=0.36)
    frame = table.frame.set_index("Config")
    assert frame.loc["AVG", "% of CoreInfer"] == pytest.approx(6.158 / 5.193 * 100)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "t.duckdb").init()


def test_search_table_from_a_store(store: Store) -> None:
    run = store.create_run(kind="search", model="m", method="sparsity-levels", pattern="activation",
                           spec={"model": "m", "task": "squadv2", "metric": "exact", "goal": 0.4},
                           origin="published", source="Paper A", status="done")
    store.add_search_trials(run, [
        {"trial": 2, "params": [0.25, 0.75, 0.47, 100], "actual_sparsity": 0.401,
         "metric": "exact", "value": 16.0},
        {"trial": 1, "params": [0.15, 0.85, 0.5, 100], "actual_sparsity": 0.397,
         "metric": "exact", "value": 14.5},
        {"trial": 3, "params": [0.35, 0.65, 0.44, 100], "actual_sparsity": 0.404,
         "metric": "exact", "value": None},
    ])
    trials = tables.load_search_trials(store)
    assert tables.search_runs(trials)["task"].tolist() == ["squadv2"]
    shown = tables.search_table(trials, run).display()
    assert list(shown.columns) == ["Params", "Actual sparsity", "Exact Match"]
    assert shown.values.tolist() == [["[0.15, 0.85, 0.5, 100]", "0.397", "14.5"],
                                     ["[0.25, 0.75, 0.47, 100]", "0.401", "16.0"],
                                     ["[0.35, 0.65, 0.44, 100]", "0.404", "no value"]]
    fig = charts.search_chart(trials[trials["run_id"] == run], None, 0.4)
    assert "run " in fig.data[0].hovertext[0]


# -- (e) filters ---------------------------------------------------------------------------------
def test_filters_keep_dense_baselines() -> None:
    rows = make_rows(ppl("dense", 0, 5.0), ppl("wanda", 0.5, 6.0), ppl("magnitude", 0.5, 9.0),
                     ppl("wanda", 0.5, 6.4, **published()))
    kept = tables.filter_rows(rows, methods=["wanda"], origins=["own"])
    assert sorted(kept["method"]) == ["dense", "wanda"]
    assert tables.choices(rows, "method") == ["dense", "magnitude", "wanda"]
    assert tables.choices(rows, "group") == [tables.OWN_GROUP, "Paper A"]
    assert len(tables.filter_rows(rows, models=[])) == 0


# -- export --------------------------------------------------------------------------------------
def _number(text: str) -> float | None:
    cleaned = text.replace("%", "").replace("+", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def test_markdown_round_trip_keeps_every_number() -> None:
    rows = make_rows(ppl("dense", 0, 5.114), ppl("wanda", 0.3, 5.5244),
                     ppl("magnitude", 0.7, None, status="diverged", note="a | b"))
    shown = tables.perplexity_table(rows).display()
    text = export.to_markdown(shown)
    lines = text.splitlines()
    assert lines[0].startswith("| Model | Dataset | Method | PPL |")
    assert set(lines[1].replace("|", "").split()) == {"---"}
    back = export.parse_markdown(text)
    assert list(back.columns) == list(shown.columns)
    assert back.values.tolist() == shown.values.tolist()
    numbers = [_number(v) for v in back["PPL"]]
    assert numbers[:2] == [pytest.approx(5.11), pytest.approx(5.52)]
    assert back["Δ from dense"].tolist() == ["baseline", "+8.03%", "diverged"]
    assert back["Note"].iloc[2] == "a | b"


def test_export_writes_collapsed_not_the_number() -> None:
    shown = tables.perplexity_table(collapsed_rows()).display()
    back = pd.read_csv(io.StringIO(export.to_csv(shown)), dtype=str, keep_default_na=False)
    row = back[back["Method"] == "Magnitude 95%"].iloc[0]
    assert (row["PPL"], row["Δ from dense"]) == ("collapsed", "collapsed")
    assert export.cell_number(row["PPL"]) is None
    markdown = export.parse_markdown(export.to_markdown(shown))
    assert markdown.loc[markdown["Method"] == "Magnitude 95%", "PPL"].iloc[0] == "collapsed"
    assert "6960449.00" not in export.to_csv(shown)  # the value is in the note only


def test_csv_is_exactly_the_shown_table() -> None:
    shown = pd.DataFrame({"Method": ["Wanda 50%"], "PPL": ["6.42"], "Note": ["x, y"]})
    assert export.to_csv(shown) == 'Method,PPL,Note\nWanda 50%,6.42,"x, y"\n'
    assert pd.read_csv(io.StringIO(export.to_csv(shown)), dtype=str).equals(shown)


# -- charts --------------------------------------------------------------------------------------
def test_perplexity_chart_marks_published_and_diverged() -> None:
    rows = make_rows(ppl("dense", 0, 5.0), ppl("wanda", 0.5, 6.0),
                     ppl("wanda", 0.3, 5.5, **published()), ppl("wanda", 0.5, 6.42, **published()),
                     ppl("magnitude", 0.7, None, status="diverged"))
    fig = charts.perplexity_chart(rows)
    assert fig.layout.yaxis.type == "log"
    by_name = {t.name: t for t in fig.data}
    assert by_name["Wanda · Paper A"].marker.symbol == "circle-open"
    assert by_name["Wanda · own"].marker.symbol == "circle"
    assert by_name["Wanda · Paper A"].line.dash == "dot"
    assert list(by_name["Wanda · Paper A"].text) == ["", "Paper A"]  # labelled at its end
    assert any(name.startswith("Dense 5.00") for name in by_name)
    assert "diverged" in by_name["diverged (no finite PPL)"].text[0]
    assert all("run " in h for t in fig.data for h in t.hovertext)


def test_perplexity_chart_marks_collapsed_runs_at_the_top() -> None:
    rows = make_rows(ppl("magnitude", 0.7, None, status="diverged"),
                     ppl("dense", 0, 20.0), ppl("wanda", 0.5, 30.0),
                     ppl("magnitude", 0.95, 6960449.0, status="collapsed"))
    fig = charts.perplexity_chart(rows)
    by_name = {t.name: t for t in fig.data}
    mark = by_name["collapsed (PPL ≥ vocabulary size)"]
    diverged = by_name["diverged (no finite PPL)"]
    assert list(mark.x) == [95.0] and list(mark.y) == list(diverged.y)  # at the top, like diverged
    assert mark.text[0] == "Magnitude: collapsed" and "diverged" not in mark.text[0]
    assert "collapsed (stored PPL 6,960,449.00" in mark.hovertext[0]
    assert max(fig.layout.yaxis.tickvals) < 1000  # the stored value does not stretch the axis
    assert all(6960449.0 not in t.y for t in fig.data if t is not mark)


def test_retention_chart_hatches_published_bars() -> None:
    rows = make_rows(*zero_shot("dense", SEED_000["dense"], 1, **published()),
                     *zero_shot("magnitude", SEED_000["magnitude"], 2, **published()))
    fig = charts.retention_chart(tables.zero_shot_table(rows))
    assert fig.data[0].marker.pattern.shape == "/"
    assert fig.data[0].x[1] == pytest.approx(97.61, abs=0.01)
    assert list(fig.data[0].y) == ["m · Dense (Baseline) · Paper A", "m · Magnitude 30% · Paper A"]
    assert not any("#" in label for label in fig.data[0].y)  # no internal id of a published row
    from core.present.charts.zero_shot import _bar_labels

    twins = pd.DataFrame({"Model": ["m", "m"], "Method": ["Wanda 50%"] * 2,
                          "Source": ["Paper A (Table 2)", "Paper A (Table 3)"],
                          "Origin": ["Published"] * 2, "Run": [-5, -6]})
    assert list(_bar_labels(twins).values()) == ["m · Wanda 50% · Paper A",
                                                 "m · Wanda 50% · Paper A (2)"]  # a bar each


# -- the published figures, end to end -----------------------------------------------------------
def test_published_reference_rows(published_store: Store) -> None:
    rows = tables.load_metrics(published_store, "perplexity")
    shown = tables.perplexity_table(rows).display()
    readme = shown[(shown["Source"] == WANDA_README) & (shown["Model"] == "Llama-2-7b-hf")]
    row = readme[readme["Method"] == "Wanda 50%"].iloc[0]
    assert (row["PPL"], row["Δ from dense"], row["Origin"]) == ("6.42", "+25.39%", "Published")
    values = pd.concat([shown["PPL"], shown["Δ from dense"]]).str.lower()
    assert not values.str.contains("nan").any()


def test_published_seed_000_tables(published_store: Store) -> None:
    rows = tables.load_metrics(published_store, "perplexity")
    seed = [g for g in tables.choices(rows, "group") if g.startswith("Seed report 000")]
    if not seed:
        pytest.skip("seed 000 figures not in core/store/published/figures.csv")
    table = tables.perplexity_table(tables.filter_rows(rows, groups=seed))
    assert cell(table, "Magnitude 70%", "PPL") == "diverged"
    assert cell(table, "Magnitude 30%", "Δ from dense") == "+12.14%"
    zs = tables.zero_shot_table(tables.load_metrics(published_store, "zero_shot"))
    assert cell(zs, "Magnitude 30%", "Retention") == "97.61%"
    assert cell(zs, "Wanda 50%", "Accuracy") == "66.21%"
    assert (zs.display()["Method"] == "Dense (Baseline)").sum() == 1


# -- own runs: the dense baseline must share the evaluation settings -----------------------------
def own_run(store: Store, method: str, metrics: list[dict[str, Any]], sparsity: str = "0.5",
            **spec_fields: Any) -> int:
    """An own, finished run created as the pipeline does (spec from ``PruneSpec``)."""
    from core.runs.kinds.prune import PruneSpec

    spec = PruneSpec(method=method, sparsity="0" if method == "dense" else sparsity,
                     **spec_fields)
    run_id = create_run(store, spec, status="done")
    store.add_metrics(run_id, metrics)
    return run_id


def zs_rows(scores: dict[str, float | str | None]) -> list[dict[str, Any]]:
    """Zero-shot metric rows as core.zeroshot stores them: a float is a score, a str a failed
    task (its error), None a score without value."""
    rows = []
    for task, value in scores.items():
        if isinstance(value, str):
            rows.append({"kind": "zero_shot", "dataset": task, "metric": "acc", "value": None,
                         "status": "missing", "note": f"task failed: {value}"})
        else:
            rows.append({"kind": "zero_shot", "dataset": task, "metric": "acc", "value": value,
                         "status": "ok" if value is not None else "missing", "stderr": 0.01,
                         "n_samples": 40, "note": "lm-eval 0.4.13"})
    return rows


def ppl_rows(value: float) -> list[dict[str, Any]]:
    return [{"kind": "perplexity", "dataset": "wiki-offline", "metric": "ppl", "value": value}]


def test_retention_of_own_runs_needs_the_same_zero_shot_settings(store: Store) -> None:
    tasks = dict(zero_shot_tasks=["piqa", "boolq"], zs_limit=40)
    dense = own_run(store, "dense", zs_rows({"piqa": 0.8, "boolq": 0.6}), **tasks)
    # Later dense runs with other settings (would win on recency) must never be the baseline.
    own_run(store, "dense", zs_rows({"piqa": 0.9, "boolq": 0.9}), num_fewshot=5, **tasks)
    own_run(store, "dense", zs_rows({"piqa": 0.7, "boolq": 0.7}), dtype="float16", **tasks)
    same = own_run(store, "wanda", zs_rows({"piqa": 0.6, "boolq": 0.3}), **tasks)
    other_limit = own_run(store, "wanda", zs_rows({"piqa": 0.6, "boolq": 0.3}),
                          zero_shot_tasks=["piqa", "boolq"], zs_limit=20)
    table = tables.zero_shot_table(tables.load_metrics(store, "zero_shot"))
    frame = table.frame.set_index("Run")
    assert frame.loc[same, "Retention"] == pytest.approx(0.45 / 0.7)
    assert frame.loc[same, "Baseline run"] == dense
    assert frame.loc[same, "Evaluation"] == "0-shot, limit 40, auto dtype"
    assert math.isnan(frame.loc[other_limit, "Retention"])
    shown = table.display().set_index("Run")
    assert shown.loc[str(other_limit), "Retention"] == ""
    assert shown.loc[str(other_limit), "Baseline run"] == ""
    note = shown.loc[str(other_limit), "Note"]
    assert "same zero-shot settings (num_fewshot=0, zs_limit=20, dtype=auto)" in note
    assert f"run {dense} (num_fewshot=0, zs_limit=40, dtype=auto)" in note
    assert any("same few-shot count, example limit and dtype" in n for n in table.notes)


def test_own_dense_baseline_prefers_the_same_task_set(store: Store) -> None:
    same_tasks = own_run(store, "dense", zs_rows({"piqa": 0.8, "boolq": 0.6}),
                         zero_shot_tasks=["piqa", "boolq"])
    own_run(store, "dense", zs_rows({"piqa": 0.8, "boolq": 0.6, "rte": 0.5}),
            zero_shot_tasks=["piqa", "boolq", "rte"])
    pruned = own_run(store, "wanda", zs_rows({"piqa": 0.6, "boolq": 0.3}),
                     zero_shot_tasks=["piqa", "boolq"])
    frame = tables.zero_shot_table(tables.load_metrics(store, "zero_shot")).frame.set_index("Run")
    assert frame.loc[pruned, "Baseline run"] == same_tasks


def test_perplexity_delta_of_own_runs_needs_the_same_windows(store: Store) -> None:
    dense = own_run(store, "dense", ppl_rows(20.0), ppl_seqlen=256, max_windows=4)
    own_run(store, "dense", ppl_rows(18.0), ppl_seqlen=512, max_windows=4)  # later, other seqlen
    own_run(store, "dense", ppl_rows(19.0), ppl_seqlen=256, max_windows=4, dtype="bfloat16")
    same = own_run(store, "wanda", ppl_rows(30.0), ppl_seqlen=256, max_windows=4)
    all_windows = own_run(store, "wanda", ppl_rows(30.0), ppl_seqlen=256, max_windows=None)
    table = tables.perplexity_table(tables.load_metrics(store, "perplexity"))
    frame = table.frame.set_index("Run")
    assert frame.loc[same, "Δ from dense"] == pytest.approx(50.0)
    assert frame.loc[same, "_baseline_run"] == dense
    assert math.isnan(frame.loc[all_windows, "Δ from dense"])
    shown = table.display().set_index("Run")
    assert shown.loc[str(all_windows), "Δ from dense"] == ""
    note = shown.loc[str(all_windows), "Note"]
    assert "same settings (ppl_seqlen=256, max_windows=none, dtype=auto)" in note
    assert "Δ not computed" in note


def test_published_baselines_keep_the_same_source_rule() -> None:
    rows = make_rows(ppl("dense", 0, 5.0, spec={"seqlen": 2048}, **published()),
                     ppl("wanda", 0.5, 6.0, spec={"seqlen": 4096}, **published()))
    frame = tables.perplexity_table(rows).frame.set_index("Method")
    assert frame.loc["Wanda 50%", "Δ from dense"] == pytest.approx(20.0)


# -- per-task drop from dense ---------------------------------------------------------------------
DROP_DENSE = {"piqa": 0.80, "boolq": 0.60, "rte": 0.50, "arc_easy": "ConnectionError: offline"}
DROP_WANDA = {"piqa": 0.82, "boolq": 0.45, "arc_easy": "ConnectionError: offline"}  # no rte
DROP_MAGNITUDE = {"piqa": 0.70, "boolq": 0.54, "rte": 0.40, "arc_easy": 0.30}


@pytest.fixture
def drop_store(store: Store) -> dict[str, int]:
    settings = dict(zero_shot_tasks=["piqa", "boolq", "rte", "arc_easy"], zs_limit=40)
    ids = {"dense": own_run(store, "dense", zs_rows(DROP_DENSE), **settings),
           "wanda": own_run(store, "wanda", zs_rows(DROP_WANDA), **settings),
           "magnitude": own_run(store, "magnitude", zs_rows(DROP_MAGNITUDE), **settings)}
    # A 1-shot dense run: must not appear in (nor be the baseline of) the 0-shot view.
    own_run(store, "dense", zs_rows({"piqa": 0.99, "boolq": 0.99}), num_fewshot=1, **settings)
    return ids


def test_drop_from_dense_per_task_and_on_average(store: Store, drop_store: dict[str, int]
                                                 ) -> None:
    rows = tables.load_metrics(store, "zero_shot")
    table = tables.drop_table(rows, "smollm2-135m", "50%",
                              evaluation="0-shot, limit 40, auto dtype")
    shown = table.display().set_index(["Task", "Method"])
    assert list(shown.columns) == ["Score", "Dense", "Drop (points)", "95% interval (points)",
                                   "Relative drop", "Source", "Run", "Baseline run", "Note"]
    improved = shown.loc[("piqa", "Wanda 50%")]
    assert (improved["Score"], improved["Dense"], improved["Drop (points)"],
            improved["Relative drop"]) == ("82.00%", "80.00%", "+2.00", "+2.50%")
    # every score has stderr 0.01: a drop's se is sqrt(2) x 1 point; +2.00 +- 2.77 holds 0
    assert improved["95% interval (points)"] == "-0.77 to +4.77 (within noise)"
    worse = shown.loc[("boolq", "Wanda 50%")]
    assert (worse["Drop (points)"], worse["Relative drop"]) == ("-15.00", "-25.00%")
    assert worse["95% interval (points)"] == "-17.77 to -12.23"
    assert shown.loc[("rte", "Magnitude 50%"), "Relative drop"] == "-20.00%"
    # a failed task: shown as failed with the error, no drop
    failed = shown.loc[("arc_easy", "Wanda 50%")]
    assert (failed["Score"], failed["Dense"], failed["Drop (points)"]) == ("failed", "failed", "")
    assert "task failed: ConnectionError: offline" in failed["Note"]
    # dense failed, the pruned run has a score: no drop either
    dense_failed = shown.loc[("arc_easy", "Magnitude 50%")]
    assert (dense_failed["Score"], dense_failed["Dense"], dense_failed["Relative drop"]) == (
        "30.00%", "failed", "")
    # the run did not evaluate a task that dense has
    absent = shown.loc[("rte", "Wanda 50%")]
    assert (absent["Score"], absent["Dense"], absent["Drop (points)"]) == ("no value", "50.00%",
                                                                           "")
    assert "did not evaluate rte" in absent["Note"]
    # averages over the tasks both scored: wanda piqa+boolq, magnitude piqa+boolq+rte
    frame = table.frame.set_index(["Task", "Method"])
    wanda = frame.loc[("Average", "Wanda 50%")]
    assert wanda["Score"] == pytest.approx(0.635) and wanda["Dense"] == pytest.approx(0.70)
    assert wanda["Drop (points)"] == pytest.approx(-6.5)
    # the average of two drops with se sqrt(2) points each: se 1 point, -6.50 +- 1.96
    assert wanda["95% interval (points)"] == "-8.46 to -4.54" and not wanda["_noise"]
    assert frame.loc[("piqa", "Wanda 50%"), "_noise"]
    assert wanda["Relative drop"] == pytest.approx(-9.285714, abs=1e-5)
    magnitude = frame.loc[("Average", "Magnitude 50%")]
    assert magnitude["Drop (points)"] == pytest.approx((1.64 / 3 - 1.9 / 3) * 100)
    assert shown.loc[("Average", "Magnitude 50%"), "Relative drop"] == "-13.68%"
    assert "2 of 4 tasks" in shown.loc[("Average", "Wanda 50%"), "Note"]
    assert set(shown["Baseline run"]) == {str(drop_store["dense"])}
    # the average's relative drop is retention - 100%
    retention = tables.zero_shot_table(rows).frame.set_index("Run")["Retention"]
    assert retention[drop_store["wanda"]] - 1 == pytest.approx(wanda["Relative drop"] / 100)
    assert list(dict.fromkeys(shown.index.get_level_values("Task"))) == [
        "piqa", "arc_easy", "boolq", "rte", "Average"]
    assert any("not counted" in n for n in table.notes)
    for text in (export.to_csv(table.display()), export.to_markdown(table.display())):
        assert "nan" not in text.lower()


def test_failed_tasks_are_shown_and_not_averaged(store: Store, drop_store: dict[str, int]
                                                 ) -> None:
    rows = tables.load_metrics(store, "zero_shot")
    per_task = tables.per_task_table(rows, "smollm2-135m", "50%",
                                     evaluation="0-shot, limit 40, auto dtype")
    shown = per_task.display().set_index("Task")
    assert list(shown.columns) == ["Dense", "Dense SE", "Magnitude", "Magnitude SE", "Wanda",
                                   "Wanda SE", "Note"]  # each score's lm-eval stderr beside it
    assert shown.loc["piqa", "Dense"] == "80.00%"  # not the 1-shot dense run's 99%
    assert (shown.loc["piqa", "Dense SE"], shown.loc["arc_easy", "Wanda SE"]) == ("1.00%", "")
    assert any("standard error" in n for n in per_task.notes)
    assert shown.loc["arc_easy", "Wanda"] == "failed"
    assert shown.loc["arc_easy", "Magnitude"] == "30.00%"
    assert shown.loc["arc_easy", "Note"] == "Dense, Wanda: task failed: ConnectionError: offline"
    assert shown.loc["rte", "Wanda"] == "no value"
    assert shown.loc["piqa", "Note"] == ""  # lm-eval provenance notes are not repeated
    average = tables.zero_shot_table(rows).display().set_index("Run")
    wanda = average.loc[str(drop_store["wanda"])]
    assert (wanda["Tasks"], wanda["Accuracy"]) == ("2", "63.50%")
    assert "arc_easy failed" in wanda["Note"] and "not counted" in wanda["Note"]


def test_per_task_views_show_the_newest_own_variants_only(store: Store) -> None:
    """14 Wanda variants (calibration seeds): the per-task table and drop table show the 12
    newest, and say how many more there are."""
    from core.present.tables.zero_shot import MAX_OWN_COLUMNS

    own_run(store, "dense", zs_rows({"piqa": 0.8}), zero_shot_tasks=["piqa"])
    ids = [own_run(store, "wanda", zs_rows({"piqa": 0.7}), zero_shot_tasks=["piqa"], seed=seed)
           for seed in range(MAX_OWN_COLUMNS + 2)]
    rows = tables.load_metrics(store, "zero_shot")
    per_task = tables.per_task_table(rows, "smollm2-135m", "50%")
    methods = [c for c in per_task.columns if c.startswith("Wanda") and not c.endswith(" SE")]
    assert len(methods) == MAX_OWN_COLUMNS
    assert all(f"seed {seed}" in " ".join(methods) for seed in range(2, MAX_OWN_COLUMNS + 2))
    assert "seed 0," not in " ".join(methods)  # the two oldest are left out, and said so
    assert any("12 newest methods and variants are shown, 2 more" in n for n in per_task.notes)
    drop = tables.drop_table(rows, "smollm2-135m", "50%")
    assert set(drop.frame["Run"].dropna().astype(int)) == set(ids[2:])
    assert any("2 more are not" in n for n in drop.notes)


def test_per_task_view_keeps_evaluation_settings_apart(store: Store,
                                                        drop_store: dict[str, int]) -> None:
    rows = tables.load_metrics(store, "zero_shot")
    assert tables.zs_evaluations(rows, "smollm2-135m") == ["0-shot, limit 40, auto dtype",
                                                         "1-shot, limit 40, auto dtype"]
    one_shot = tables.per_task_table(rows, "smollm2-135m", "50%",
                                     evaluation="1-shot, limit 40, auto dtype")
    assert one_shot.empty  # no pruned 1-shot run: nothing is mixed in


def test_drop_without_a_comparable_dense_run(store: Store) -> None:
    own_run(store, "dense", zs_rows({"piqa": 0.8}), zero_shot_tasks=["piqa"], num_fewshot=5)
    pruned = own_run(store, "wanda", zs_rows({"piqa": 0.7}), zero_shot_tasks=["piqa"])
    table = tables.drop_table(tables.load_metrics(store, "zero_shot"), "smollm2-135m", "50%")
    shown = table.display().set_index("Task")
    assert (shown.loc["piqa", "Score"], shown.loc["piqa", "Dense"],
            shown.loc["piqa", "Drop (points)"]) == ("70.00%", "no value", "")
    assert "same zero-shot settings" in shown.loc["Average", "Note"]
    assert shown.loc["Average", "Run"] == str(pruned)
    assert charts.drop_chart(table).layout.annotations[0].text.startswith("No drop")


def test_drop_table_of_the_published_seed_000(published_store: Store) -> None:
    rows = tables.load_metrics(published_store, "zero_shot")
    seed = [g for g in tables.choices(rows, "group") if g.startswith("Seed report 000")]
    if not seed:
        pytest.skip("seed 000 figures not in core/store/published/figures.csv")
    table = tables.drop_table(rows, "Llama-2-7b-hf", "30%", groups=seed)
    shown = table.display().set_index(["Task", "Method"])
    piqa = shown.loc[("piqa", "Magnitude 30%")]  # 78.40% vs dense 78.13%: an improvement
    assert (piqa["Drop (points)"], piqa["Relative drop"]) == ("+0.27", "+0.35%")
    assert shown.loc[("Average", "Magnitude 30%"), "Relative drop"] == "-2.39%"  # 97.61% retained


def test_drop_chart_is_a_heatmap_of_the_points(store: Store, drop_store: dict[str, int]) -> None:
    table = tables.drop_table(tables.load_metrics(store, "zero_shot"), "smollm2-135m", "50%",
                              evaluation="0-shot, limit 40, auto dtype")
    fig = charts.drop_chart(table)
    heat = fig.data[0]
    assert heat.type == "heatmap" and heat.zmid == 0
    assert list(heat.x) == ["piqa", "arc_easy", "boolq", "rte", "Average"]
    assert list(heat.y) == ["Magnitude 50%", "Wanda 50%"]
    wanda = list(heat.y).index("Wanda 50%")
    assert heat.z[wanda][2] == pytest.approx(-15.0)  # boolq
    assert heat.z[wanda][0] == 0.0 and "drop +2.00 points" in heat.hovertext[wanda][0]
    assert heat.z[wanda][1] is None and heat.text[wanda][1] == "failed"
    assert heat.text[wanda][3] == "no value"
    bars = charts.per_task_chart(tables.per_task_long(
        tables.load_metrics(store, "zero_shot"), "smollm2-135m", "50%",
        evaluation="0-shot, limit 40, auto dtype"))
    wanda_bars = next(t for t in bars.data if t.name == "Wanda")
    assert dict(zip(wanda_bars.x, wanda_bars.text, strict=True)) == {
        "piqa": "", "boolq": "", "arc_easy": "failed", "rte": "no value"}
    # every stored score has stderr 0.01: a 95% error bar of ±1.96 points, none on failed ones
    errors = dict(zip(wanda_bars.x, wanda_bars.error_y.array, strict=True))
    assert errors["piqa"] == pytest.approx(1.959964) and math.isnan(errors["arc_easy"])
    assert wanda_bars.error_y.visible and "± 1.96 (95%)" in wanda_bars.hovertext[0]


# -- layer statistics (seed 002) ------------------------------------------------------------------
def test_block_sparsity_and_model_summary_of_an_own_run(store: Store) -> None:
    run = own_run(store, "wanda", ppl_rows(30.0))
    blocks = {0: 0.50, 1: 0.48, 2: 0.52}
    rows = [{"block": b, "layer": "block", "stat": "sparsity", "value": v}
            for b, v in blocks.items()]
    rows += [{"block": b, "layer": name, "stat": "sparsity", "value": v + d}
             for b, v in blocks.items()
             for name, d in (("self_attn.q_proj", -0.01), ("mlp.down_proj", 0.01))]
    rows += [{"block": None, "layer": "model", "stat": "mean", "value": 0.50},
             {"block": None, "layer": "model", "stat": "std", "value": 0.016330},
             {"block": 1, "layer": "model", "stat": "min", "value": 0.48},
             {"block": 2, "layer": "model", "stat": "max", "value": 0.52},
             {"block": None, "layer": "model", "stat": "overall", "value": 0.5001}]
    store.add_layer_stats(run, rows)
    stats = tables.load_layer_stats(store)
    assert tables.layer_runs(stats)["run_id"].tolist() == [run]
    table = tables.block_sparsity_table(stats, run)
    shown = table.display()
    assert shown.columns.tolist() == ["Block", "Sparsity", "Δ from target (points)", "Linears",
                                      "Least pruned linear", "Most pruned linear"]
    assert shown.values.tolist()[1] == ["1", "48.00%", "-2.00", "2",
                                        "self_attn.q_proj (47.00%)", "mlp.down_proj (49.00%)"]
    assert shown["Δ from target (points)"].tolist() == ["0.00", "-2.00", "+2.00"]
    summary = tables.layer_summary_table(stats, run).display()
    assert summary[["Statistic", "Sparsity", "Block"]].values.tolist() == [
        ["Mean over blocks", "50.00%", ""], ["Std over blocks", "1.63%", ""],
        ["Lowest block", "48.00%", "1"], ["Highest block", "52.00%", "2"],
        ["Overall (all prunable weights)", "50.01%", ""]]
    fig = charts.block_sparsity_chart(table, 0.5)
    assert list(fig.data[0].x) == [0, 1, 2]
    assert list(fig.data[0].y) == pytest.approx([50.0, 48.0, 52.0])


def test_summary_is_computed_from_blocks_when_not_stored(store: Store) -> None:
    run = own_run(store, "magnitude", ppl_rows(30.0))
    store.add_layer_stats(run, [{"block": b, "layer": "block", "stat": "sparsity", "value": v}
                                for b, v in ((0, 0.4), (1, 0.6))])
    frame = tables.layer_summary_table(tables.load_layer_stats(store), run).frame
    frame = frame.set_index("Statistic")
    assert frame.loc["Std over blocks", "Sparsity"] == pytest.approx(0.1)
    assert frame.loc["Highest block", "Block"] == 1
    assert "computed from the 2 per-block rows" in frame.loc["Mean over blocks", "Note"]


def test_seed_002_layer_statistics(published_store: Store) -> None:
    stats = tables.load_layer_stats(published_store)
    runs = tables.layer_runs(stats)
    seed = runs[runs["group"].str.startswith("Seed report 002")]
    if seed.empty:
        pytest.skip("seed 002 figures not in core/store/published/figures.csv")
    run = int(seed["run_id"].iloc[0])
    assert tables.block_sparsity_table(stats, run).empty  # the seed gives only the summary
    summary = tables.layer_summary_table(stats, run).display().set_index("Statistic")
    assert (summary.loc["Mean over blocks", "Sparsity"], summary.loc["Lowest block", "Block"],
            summary.loc["Highest block", "Sparsity"], summary.loc["Highest block", "Block"]
            ) == ("50.03%", "0", "50.04%", "10")
    assert "Layer 10" in summary.loc["Highest block", "Note"]


# -- charts stay readable with many runs ----------------------------------------------------------
def test_many_setting_variants_draw_one_line_through_the_latest_runs() -> None:
    runs = [ppl("wanda", s, 6.0 + seed + s, spec={"seed": seed}, run_id=100 + 10 * seed + i)
            for seed in range(10) for i, s in enumerate((0.3, 0.5))]
    fig = charts.perplexity_chart(make_rows(ppl("dense", 0, 5.0), *runs))
    lines = [t for t in fig.data if t.name.startswith("Wanda")]
    main = next(t for t in lines if t.showlegend)
    assert main.name == "Wanda · own (latest run at each sparsity)"
    assert list(main.y) == [6.0 + 9 + 0.3, 6.0 + 9 + 0.5]  # seed 9: the latest runs
    others = [t for t in lines if t.name.endswith("other runs")]
    assert len(others) == 1 and len(others[0].y) == 18 and others[0].showlegend is False
    few = charts.perplexity_chart(make_rows(ppl("dense", 0, 5.0), *runs[:8]))
    assert len([t for t in few.data if t.name.startswith("Wanda")]) == 4  # one line a seed


def test_retention_chart_draws_the_latest_runs_only_when_there_are_many() -> None:
    records = [zero_shot("dense", {"piqa": 0.8}, 1)[0]]
    records += [zero_shot("wanda", {"piqa": 0.4 + i / 1000}, 2 + i)[0] for i in range(50)]
    table = tables.zero_shot_table(make_rows(*records))
    fig = charts.retention_chart(table)
    bars = sum(len(t.y) for t in fig.data)
    assert bars == charts.MAX_BARS
    assert "40 latest of 51 runs" in fig.layout.title.text
    assert all(f"#{run}" in " ".join(fig.data[0].y) for run in (51, 12))
    assert "#11" not in " ".join(t for d in fig.data for t in d.y)


def test_compute_time_chart_groups_setting_variants_by_method() -> None:
    from core.present import ablations

    runs = [{"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": 10.0 + i,
             "method": "wanda", "spec": {"method": "wanda", "seed": i}, "run_id": 10 + i}
            for i in range(20)]
    long = ablations.compute_time_long(make_rows(*runs), tables.OWN_GROUP)
    assert long["method"].nunique() == 20  # a row of the grid per seed
    fig = charts.compute_time_chart(long)
    assert [t.name for t in fig.data] == ["Wanda"]
    assert list(fig.data[0].y) == [29.0] and "20 setting variants" in fig.layout.title.text


@pytest.mark.parametrize(("low", "high"), [(16.7, 33.4), (5.6, 6.9), (100, 101), (61, 833),
                                           (1.0, 1e6), (5.68, 6.96e6)])
def test_log_axes_get_readable_ticks_for_any_range(low: float, high: float) -> None:
    from core.present.charts import MAX_TICKS, MIN_TICKS, log_ticks

    ticks = log_ticks(low, high)
    visible = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    assert visible == ticks and ticks == sorted(set(ticks))
    assert MIN_TICKS <= len(ticks) <= MAX_TICKS, ticks
    assert all(f"{t:g}" == f"{float(f'{t:.3g}'):g}" for t in ticks)  # short labels: 15, 20, 30


@pytest.mark.parametrize("values", [(11.0, 14.0), (5.11, 5.2), (18.0, 900.0), (12.0,)])
def test_a_log_perplexity_axis_shows_at_least_three_ticks(values: tuple[float, ...]) -> None:
    """The axis range reaches the outer ticks (two close own runs once showed none at all)."""
    from core.present.charts import MIN_TICKS

    rows = make_rows(*(ppl("wanda", 0.3 + n / 10, v) for n, v in enumerate(values)))
    axis = charts.perplexity_chart(rows).layout.yaxis
    low, high = (10 ** end for end in axis.range)
    shown = [t for t in axis.tickvals if low <= t <= high]
    assert len(shown) >= MIN_TICKS, (axis.range, axis.tickvals)
    assert low <= min(values) and max(values) <= high


# -- uncertainty of perplexities (per-window NLLs) ------------------------------------------------
def test_perplexity_intervals_from_the_stored_windows() -> None:
    """PPL's interval is the t interval of its windows' mean NLL; Δ's is paired over the same
    windows as dense; a Δ inside its interval reads 'within noise'; rows without windows
    (published, or older runs) have none."""
    rng = np.random.default_rng(0)
    hard = rng.normal(0, 0.4, 16)  # the windows' own difficulty, shared by every model
    dense = 2.5 + hard + rng.normal(0, 0.01, 16)
    clear = 2.6 + hard + rng.normal(0, 0.01, 16)  # +0.1 NLL: about +10.5%
    noisy = 2.5 + hard + rng.normal(0, 0.05, 16)
    rows = make_rows(
        ppl("dense", 0, math.exp(dense.mean()), nlls=dense),
        ppl("wanda", 0.5, math.exp(clear.mean()), nlls=clear),
        ppl("magnitude", 0.5, math.exp(noisy.mean()), nlls=noisy),
        ppl("sparsegpt", 0.5, 13.0, nlls=None),
        ppl("dense", 0, 12.0, **published()), ppl("wanda", 0.5, 14.0, **published()))
    table = tables.perplexity_table(rows)
    frame = table.frame.set_index(["Source", "Method"])
    own = frame.loc[""]
    low, high = noise.ppl_interval(list(clear))
    assert own.loc["Wanda 50%", "PPL 95% interval"] == f"{low:.2f} to {high:.2f}"
    d_low, d_high = noise.ppl_change_interval(list(clear), list(dense))
    assert 9 < d_low < d_high < 12
    assert own.loc["Wanda 50%", "Δ 95% interval"] == f"{d_low:+.2f}% to {d_high:+.2f}%"
    assert not own.loc["Wanda 50%", "_noise"]
    assert own.loc["Magnitude 50%", "Δ 95% interval"].endswith("(within noise)")
    assert own.loc["Magnitude 50%", "_noise"]
    assert own.loc["Dense (Baseline)", "Δ 95% interval"] == ""  # the baseline itself
    assert own.loc["SparseGPT 50%", "PPL 95% interval"] == ""  # stored no windows
    assert (frame.loc["Paper A", "PPL 95% interval"] == "").all()
    assert any("per-window NLLs" in note for note in table.notes)
    shown = table.display()
    assert "PPL 95% interval" in shown.columns and "Δ 95% interval" in shown.columns
    # a table without any windows shows neither column (nor the note)
    bare = tables.perplexity_table(make_rows(ppl("dense", 0, 12.0), ppl("wanda", 0.5, 14.0)))
    assert "PPL 95% interval" not in bare.display().columns and not bare.notes


def test_dense_is_the_captioned_dashed_level_with_its_band_and_nothing_is_clipped() -> None:
    """The walk's chart: dense 37.70 with 4 windows (interval about 15.5 to 91.6) and a Wanda
    run whose error bar reaches far above it."""
    rng = np.random.default_rng(1)
    dense = np.log(37.7) + rng.normal(0, 0.6, 4)
    dense += np.log(37.7) - dense.mean()
    wanda = dense + 0.9 + rng.normal(0, 0.3, 4)
    rows = make_rows(ppl("dense", 0, math.exp(dense.mean()), nlls=dense),
                     ppl("wanda", 0.5, math.exp(wanda.mean()), nlls=wanda),
                     ppl("dense", 0, 30.0, **published(dataset="ptb")))
    figure = charts.perplexity_chart(rows[rows["dataset"] == "wikitext2"])
    level = next(t for t in figure.data if t.name == "Dense 37.70 · own")
    assert level.line.dash == "dash" and "markers" not in level.mode  # no diamond: those are N:M
    assert level.text[0] == "Dense 37.70 · own" and level.textposition == "top right"
    assert level.x[0] == 0  # labelled at the left, clear of the runs' error bars at 50%
    band = next(t for t in figure.data if t.name == "Dense 37.70 · own: 95% interval")
    low, high = noise.ppl_interval(list(dense))
    assert band.fill == "toself" and min(band.y) == pytest.approx(low)
    assert max(band.y) == pytest.approx(high) and "95% interval" in level.hovertext[0]
    top, bottom = (10 ** end for end in figure.layout.yaxis.range[::-1])
    bar = next(t for t in figure.data if t.name == "Wanda · own")
    reach = bar.y[0] + bar.error_y.array[0]
    assert reach * 1.05 < top and bottom * 1.05 < low  # the cap and the band inside the plot
    published_level = charts.perplexity_chart(rows[rows["dataset"] == "ptb"]).data[0]
    assert published_level.line.dash == "dot"


def test_perplexity_chart_draws_the_intervals_as_error_bars() -> None:
    rng = np.random.default_rng(4)
    nlls = 2.5 + rng.normal(0, 0.3, 16)
    rows = make_rows(ppl("dense", 0, math.exp(nlls.mean()), nlls=nlls),
                     ppl("wanda", 0.5, math.exp(nlls.mean() + 0.1), nlls=nlls + 0.1),
                     ppl("wanda", 0.5, 14.0, **published()))
    figure = charts.perplexity_chart(rows[rows["dataset"] == "wikitext2"])
    own = [t for t in figure.data if t.name.startswith("Wanda") and "own" in t.name]
    low, high = noise.ppl_interval(list(nlls + 0.1))
    value = math.exp(nlls.mean() + 0.1)
    assert own[0].error_y.array[0] == pytest.approx(high - value)
    assert own[0].error_y.arrayminus[0] == pytest.approx(value - low)
    assert all(t.error_y.array is None for t in figure.data if "Paper A" in t.name)


def test_zero_shot_average_and_retention_intervals(store: Store, drop_store: dict[str, int]
                                                   ) -> None:
    """Every stored score has stderr 0.01: Wanda's average over piqa and boolq has se
    sqrt(2) x 0.01 / 2; retention's interval is the delta method's, not holding 100%."""
    rows = tables.load_metrics(store, "zero_shot")
    rows = rows[rows["evaluation"] == "0-shot, limit 40, auto dtype"]
    frame = tables.zero_shot_table(rows).frame.set_index("Method")
    wanda = frame.loc["Wanda 50%"]
    se = math.sqrt(2) * 0.01 / 2
    mean = (0.82 + 0.45) / 2
    assert wanda["Accuracy 95% interval"] == (f"{(mean - 1.96 * se) * 100:.2f}% to "
                                              f"{(mean + 1.96 * se) * 100:.2f}%")
    dense = (0.80 + 0.60) / 2
    ratio = mean / dense
    ratio_se = ratio * math.sqrt((se / mean) ** 2 + (se / dense) ** 2)
    assert wanda["Retention"] == pytest.approx(ratio)
    assert wanda["Retention 95% interval"] == (f"{(ratio - 1.96 * ratio_se) * 100:.2f}% to "
                                               f"{(ratio + 1.96 * ratio_se) * 100:.2f}%")
    assert "within noise" not in wanda["Retention 95% interval"]
    assert frame.loc["Dense (Baseline)", "Retention 95% interval"] == ""  # itself: 100% exactly


def test_drop_chart_marks_drops_within_noise(store: Store, drop_store: dict[str, int]) -> None:
    rows = tables.load_metrics(store, "zero_shot")
    table = tables.drop_table(rows, "smollm2-135m", "50%",
                              evaluation="0-shot, limit 40, auto dtype")
    heatmap = charts.drop_chart(table).data[0]
    cells = dict(zip(heatmap.y, heatmap.text, strict=True))
    tasks = list(heatmap.x)
    wanda = cells["Wanda 50%"]
    assert wanda[tasks.index("piqa")] == "+2.00≈"  # -0.77 to +4.77 holds 0
    assert wanda[tasks.index("boolq")] == "-15.00"  # beyond noise: no mark
    # the colour each cell gets: within noise the scale's neutral middle, never red or blue
    from plotly.colors import sample_colorscale

    scale = [list(step) for step in heatmap.colorscale]

    def colour(z: float) -> str:
        return sample_colorscale(scale, (z - heatmap.zmin)
                                 / (heatmap.zmax - heatmap.zmin))[0]

    row = list(heatmap.y).index("Wanda 50%")
    neutral = sample_colorscale(scale, 0.5)[0]
    assert colour(heatmap.z[row][tasks.index("piqa")]) == neutral
    assert colour(heatmap.z[row][tasks.index("boolq")]) != neutral
    noisy = [(r, c) for r, texts in enumerate(heatmap.text) for c, t in enumerate(texts)
             if t.endswith("≈")]
    assert noisy and all(colour(heatmap.z[r][c]) == neutral for r, c in noisy)
    # the scale spans the drops beyond noise
    assert heatmap.zmax == max(abs(z) for r, zs in enumerate(heatmap.z)
                               for c, z in enumerate(zs) if z is not None and (r, c) not in noisy)


def test_compare_gives_paired_perplexity_intervals() -> None:
    from core.present import compare

    rng = np.random.default_rng(6)
    hard = rng.normal(2.5, 0.4, 16)
    dense, near = hard + rng.normal(0, 0.02, 16), hard + rng.normal(0, 0.02, 16)
    rows = make_rows(ppl("dense", 0, math.exp(dense.mean()), nlls=dense),
                     ppl("wanda", 0.5, math.exp(near.mean()), nlls=near),
                     ppl("magnitude", 0.5, math.exp(dense.mean() + 0.2), nlls=dense + 0.2))
    shown = compare.compare_table(rows, [1, 2, 3]).display().set_index("Metric")
    low, high = noise.ppl_change_interval(list(near), list(dense))
    near_text = shown.iloc[0][[c for c in shown.columns if c.startswith("Δ #2")][0]]
    assert f"95% interval {low:+.2f}% to {high:+.2f}%; within noise" in near_text
    far_text = shown.iloc[0][[c for c in shown.columns if c.startswith("Δ #3")][0]]
    assert far_text.endswith("; worse)") and "+22.14%" in far_text


def test_charts_draw_with_plotly_whites_look() -> None:
    """The charts' template is plotly_white cut to the trace types drawn: the same layout and,
    for those types, the same trace defaults."""
    import plotly.io as pio

    white = pio.templates["plotly_white"]
    ours = charts._LAYOUT["template"]
    assert ours.layout == white.layout
    for kind in ("scatter", "bar", "heatmap", "parcoords"):
        assert getattr(ours.data, kind) == getattr(white.data, kind), kind
    figure = charts.perplexity_chart(pd.DataFrame(), "empty")
    assert figure.layout.template.layout == white.layout


# -- downloads a script can read -----------------------------------------------------------------
def test_the_csv_download_holds_numbers_with_one_precision_per_column() -> None:
    """The walk's CSV: '82.50%' beside '43.3333%', 'failed' in a number column, a diverged
    perplexity and a published row's internal id."""
    frame = pd.DataFrame({
        "Method": ["Wanda 50%", "Magnitude 50%", "Dense", "SparseGPT 50%"],
        "Accuracy": [0.825, 13 / 30, None, 0.5],
        tables.TEXT + "Accuracy": [None, None, "failed", None],
        "PPL": [6.42, math.inf, 5.1234, 7.0],
        "Run": [12, -349453035, 3, 14],
        "Source": ["", "Paper A", "", ""]})
    table = tables.Table(frame, {"Accuracy": "pct", "PPL": "ppl", "Run": "run"})
    text = export.to_csv(table.for_scripts())
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == ["Method", "Accuracy (%)", "Accuracy (%) note", "PPL",
                                  "PPL note", "Run", "Source"]
    assert back["Accuracy (%)"].dtype == float and back["PPL"].dtype == float
    assert back["Accuracy (%)"].tolist()[:2] == [82.5, 43.3333]
    assert ",82.5000," in text and ",43.3333," in text  # one precision a column
    assert math.isnan(back["Accuracy (%)"][2]) and back["Accuracy (%) note"][2] == "failed"
    assert back["PPL"][1] == math.inf and back["PPL note"][1] == "diverged"
    assert math.isnan(back["Run"][1]) and back["Source"][1] == "Paper A"
    assert table.display()["Run"].tolist() == ["12", "", "3", "14"]  # no internal id shown


def test_a_published_row_is_named_by_its_source_and_table() -> None:
    assert tables.run_reference(12) == "run 12"
    assert tables.run_reference(-755883023, "Wanda README (Sun et al. 2023)", "Table 3") == (
        "Wanda README, Table 3")
    hover = charts.hover_text(-5, "Paper A (2024)", {"table": "Table 2"})
    assert "-5" not in hover and hover.startswith("source: Paper A, Table 2")
    assert charts.hover_text(7, "", None).startswith("run 7<br>source: own run")
