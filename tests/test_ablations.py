"""Compute time (seed 004 Table 3) and ablation grids (Table 4): tables, charts and the page."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.execution import jobs
from core.present import ablations, charts, tables
from core.runs.kinds.prune import PruneSpec
from core.store.db import Store
from core.store.record import create_run
from tests.seed_files import seed_file
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

ROOT = Path(__file__).resolve().parent.parent
SEED = seed_file("004").read_text()


def seed_section(title: str) -> list[str]:
    """The lines of the seed between the table title starting with ``title`` and the next one."""
    lines = SEED.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("Table ")),
               len(lines))
    return [line for line in lines[start + 1:end] if line.strip()]


def test_compute_time_grid_holds_seed_table_3(published_store: Store) -> None:
    timing = tables.load_metrics(published_store, "timing")
    group = "Seed report 004 (SparseLLM comparison)"
    shown = ablations.compute_time_grid(timing, group).display().set_index("Method")
    lines = seed_section("Table 3")
    models = lines[0].split()
    sparsities = lines[1].split()[1:]
    columns = [f"{m} · {s}" for m in models for s in sparsities[:len(sparsities) // 2]]
    assert list(shown.columns) == columns
    for line in lines[2:]:
        method, *values = line.split()
        assert shown.loc[method].tolist() == values


def test_published_table_4_grid_and_best_cell(published_store: Store) -> None:
    ppl = tables.load_metrics(published_store, "perplexity", origin="published")
    assert set(ppl["origin"]) == {"published"}
    grids = [g for g in ablations.ablation_list(published_store, ppl) if g.table == "004 Table 4"]
    assert len(grids) == 1
    cells, params = ablations.ablation_cells(published_store, ppl, grids[0])
    assert params == ["alpha", "beta"]
    table = ablations.ablation_table(cells, "alpha", "beta")
    shown = table.display()
    lines = seed_section("Table 4")
    header = lines[0].split()[1:]
    assert list(shown.columns[1:]) == header
    seed_values = {}
    for line in lines[1:]:
        alpha, *values = line.split()
        seed_values.update({(alpha, b): v for b, v in zip(header, values, strict=True)})
    best = min((float(v), k) for k, v in seed_values.items() if v != "-")
    for i, alpha in enumerate(shown.iloc[:, 0]):
        for beta in header:
            cell, expected = shown.loc[i, beta], seed_values[(alpha, beta)]
            if expected == "-":
                assert cell == tables.MISSING
            elif (alpha, beta) == best[1]:
                assert cell == f"{expected} (best)"
            else:
                assert cell == expected
    assert f"alpha={best[1][0]}, beta={best[1][1]}" in table.notes[1]
    figure = charts.ablation_heatmap(table, "t")
    assert len(figure.layout.shapes) == 1  # the best cell outlined
    # the column axis is on top: the title sits above its label, not on it
    assert figure.layout.xaxis.side == "top" and figure.layout.margin.t >= 100
    assert figure.layout.title.yref == "container" and figure.layout.title.yanchor == "top"


def finished_sweep(tmp_path: Path, grid: dict[str, list],
                   results: list[tuple[float, str]]) -> tuple[Store, jobs.SweepSubmission]:
    """A SparseGPT sweep over ``grid`` on a tiny model whose first cells finished with
    ``results`` (perplexity, status); the other cells stay queued."""
    store = Store(tmp_path / "r.duckdb").init()
    corpus = tmp_path / "c.txt"
    corpus.write_text(SAMPLE_TEXT)
    base = PruneSpec(model=str(tiny_llama_folder(tmp_path / "model")), method="sparsegpt",
                     sparsity="0.5", calibration=str(corpus), samples=2, seqlen=32,
                     ppl_datasets=[str(corpus)], ppl_seqlen=32, max_windows=2)
    submission = jobs.submit_sweep(store, base, grid)
    for run_id, (value, status) in zip(submission.run_ids, results, strict=False):
        store.add_metrics(run_id, [{"kind": "perplexity", "dataset": str(corpus),
                                    "metric": "ppl", "value": value, "status": status}])
        store.move(run_id, "running")
        store.move(run_id, "done")
    return store, submission


def test_own_sweep_grid_says_why_a_cell_is_empty(tmp_path: Path) -> None:
    grid = {"method_params.dampening": [0.01, 0.1], "sparsity": [0.3, 0.5]}
    store, submission = finished_sweep(  # cell 3 stays queued
        tmp_path, grid, [(12.5, "ok"), (11.0, "ok"), (math.inf, "diverged")])
    everything = tables.load_metrics(store, "perplexity")
    ppl = tables.load_metrics(store, "perplexity", origin="published")  # as the page reads
    assert set(everything["origin"]) == {"own"} and ppl.empty  # no published figures here
    own = [g for g in ablations.ablation_list(store, ppl) if g.origin == "own"]
    assert own == [g for g in ablations.ablation_list(store, everything) if g.origin == "own"]
    assert [g.sweep_id for g in own] == [submission.sweep_id]
    cells, params = ablations.ablation_cells(store, ppl, own[0])
    assert params == list(grid)
    shown = ablations.ablation_table(cells, *params).display()
    assert shown.iloc[:, 0].tolist() == ["0.01", "0.1"]
    assert list(shown.columns[1:]) == ["0.3", "0.5"]
    assert shown.iloc[0, 1:].tolist() == ["12.50", "11.00 (best)"]
    assert shown.iloc[1, 1:].tolist() == [tables.DIVERGED, "queued"]
    spec = ablations.grid_spec(store, ppl, own[0])
    assert "dampening" not in spec and "sparsity=" not in spec and "samples=2" in spec
    hover = charts.ablation_heatmap(ablations.ablation_table(cells, *params), "t",
                                    spec).data[0].customdata
    assert hover[0][1].startswith("method_params.dampening=0.01, sparsity=0.5: 11.00 (best)")
    assert f"run {submission.run_ids[1]}" in hover[0][1] and "samples=2" in hover[0][1]
    assert "no run" not in hover[1][1]  # the queued cell has its run


def test_a_collapsed_cell_is_a_word_and_never_the_best(tmp_path: Path) -> None:
    grid = {"method_params.dampening": [0.01], "sparsity": [0.3, 0.5, 0.7]}
    # The collapsed cell's stored value is the lowest: it must still not be the best cell.
    store, _ = finished_sweep(tmp_path, grid,
                              [(12.5, "ok"), (3.0, "collapsed"), (math.inf, "diverged")])
    ppl = tables.load_metrics(store, "perplexity")
    own = [g for g in ablations.ablation_list(store, ppl) if g.origin == "own"]
    cells, params = ablations.ablation_cells(store, ppl, own[0])
    assert cells["status"].tolist() == ["done", "collapsed", "diverged"]
    table = ablations.ablation_table(cells, *params)
    assert table.display().iloc[0, 1:].tolist() == ["12.50 (best)", tables.COLLAPSED,
                                                    tables.DIVERGED]
    assert "perplexity 12.50" in table.notes[1]
    scatter = charts.sweep_scatter(cells, "sparsity")
    assert list(scatter.data[1].text) == ["collapsed", "diverged"]


def test_own_compute_time_and_costs(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    runs = []
    for method, seconds in (("wanda", 3.0), ("sparsegpt", 9.0), ("wanda", 4.0)):
        run_id = create_run(store, PruneSpec(model="m", method=method, sparsity="0.5"),
                            status="done")
        store.add_metrics(run_id, [
            {"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": seconds},
            {"kind": "timing", "dataset": "-", "metric": "eval_seconds", "value": 1.5},
            {"kind": "memory", "dataset": "-", "metric": "peak_mb", "value": 800.0}])
        runs.append(run_id)
    timing = tables.load_metrics(store, "timing")
    shown = ablations.compute_time_grid(timing, tables.OWN_GROUP).display()
    assert shown.to_dict("records") == [{"Method": "SparseGPT", "m · 50%": "9.00"},
                                        {"Method": "Wanda", "m · 50%": "4.00"}]  # latest wins
    costs = ablations.run_costs(timing, tables.load_metrics(store, "memory")).display()
    assert costs["Run"].tolist() == [str(r) for r in reversed(runs)]
    assert costs["Prune (s)"].tolist() == ["4.00", "9.00", "3.00"]
    assert set(costs["Peak memory (MB)"]) == {"800"} and set(costs["Device"]) == {"cpu"}
    long = ablations.compute_time_long(timing, tables.OWN_GROUP)
    assert sorted(long["seconds"]) == [4.0, 9.0]
    assert len(charts.compute_time_chart(long).data) == 2


def test_page_shows_table_3_and_table_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_DB", str(tmp_path / "r.duckdb"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page(str(ROOT / "pages/ablations.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    frames = [pd.DataFrame(d.value) for d in at.dataframe]
    grid = next(f for f in frames if f.columns[0] == "alpha \\ beta")
    assert "17.82 (best)" in grid.to_numpy().ravel()
    assert any("SparseLLM" in f.get("Method", pd.Series(dtype=str)).tolist() for f in frames)
    assert len(at.get("plotly_chart")) == 2
    assert re.search(r"Best: alpha=0\.1, beta=0\.1", " ".join(c.value for c in at.caption))
