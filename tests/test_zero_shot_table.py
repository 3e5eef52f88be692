"""The vectorized zero-shot table equals the row-by-row computation it replaced
(``tests/zero_shot_reference.py``), cell by cell: on the published figures and on own runs with
ties, failed and valueless tasks, scores without standard errors, dense runs of other settings,
a dense run scoring 0, runs without a baseline and runs told apart by their label words."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.present import tables
from core.runs.kinds.prune import PruneSpec
from core.store.db import Store
from core.store.record import create_run
from tests.zero_shot_reference import reference_frame

TASKS = ["piqa", "boolq", "rte", "arc_easy", "hellaswag"]


def assert_same_frames(new: pd.DataFrame, old: pd.DataFrame) -> None:
    """Same columns, rows and cells: numbers equal to rounding (NaN where NaN), the rest exact
    (an empty cell, None or NaN, equal to an empty one)."""
    assert list(new.columns) == list(old.columns)
    assert len(new) == len(old)
    for column in old.columns:
        a, b = new[column].reset_index(drop=True), old[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(a.to_numpy(dtype=float), b.to_numpy(dtype=float),
                                       rtol=1e-12, atol=0, equal_nan=True, err_msg=column)
        else:  # an empty cell is None or NaN (text columns are objects, or Arrow strings)
            assert [_missing(x) for x in a] == [_missing(x) for x in b], column


def _missing(cell: object) -> object:
    """None for an empty cell (None or NaN), else the cell."""
    return None if cell is None or (isinstance(cell, float) and cell != cell) else cell


def assert_matches_reference(rows: pd.DataFrame, metric: str = "acc") -> None:
    table = tables.zero_shot_table(rows, metric)
    assert_same_frames(table.frame, reference_frame(rows, metric))
    old = tables.Table(reference_frame(rows, metric), table.formats, table.notes)
    assert table.display().equals(old.display())  # what the page shows, text for text


def test_published_figures_match(published_store: Store) -> None:
    rows = tables.load_metrics(published_store, "zero_shot")
    assert not rows.empty
    assert_matches_reference(rows)
    assert_matches_reference(rows, "acc_norm")


def _scores(rng: random.Random, tasks: list[str]) -> list[dict[str, Any]]:
    """Metric rows with tied scores (a few values only), failures, valueless scores and
    scores without standard errors."""
    out = []
    for task in tasks:
        draw = rng.random()
        if draw < 0.08:
            out.append({"kind": "zero_shot", "dataset": task, "metric": "acc", "value": None,
                        "status": "missing", "note": "task failed: RuntimeError: boom"})
        elif draw < 0.14:
            out.append({"kind": "zero_shot", "dataset": task, "metric": "acc", "value": None,
                        "status": "missing"})
        else:
            out.append({"kind": "zero_shot", "dataset": task, "metric": "acc",
                        "value": rng.choice([0.25, 0.5, 0.625, 0.7, 0.8]), "status": "ok",
                        "stderr": None if draw > 0.9 else rng.choice([0.01, 0.02])})
    return out


def _own_store(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(60):
        method = rng.choice(["dense", "dense", "wanda", "magnitude", "sparsegpt"])
        tasks = rng.sample(TASKS, rng.randint(1, len(TASKS)))
        spec = PruneSpec(model=rng.choice(["m/one", "m/two", "m/no-dense"]), method=method,
                         sparsity="0" if method == "dense" else rng.choice(["0.5", "2:4"]),
                         zero_shot_tasks=tasks, zs_limit=rng.choice([20, 40]),
                         num_fewshot=rng.choice([0, 0, 5]), seed=rng.choice([0, 0, 7]))
        if spec.model == "m/no-dense" and method == "dense":
            continue
        run_id = create_run(store, spec, status="done")
        metrics = _scores(rng, tasks)
        if method == "dense" and i % 17 == 0:
            metrics = [{**m, "value": 0.0, "status": "ok"} for m in metrics]
        store.add_metrics(run_id, metrics)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_own_runs_match(tmp_path, seed: int) -> None:
    store = Store(tmp_path / "t.duckdb").init()
    _own_store(store, seed)
    rows = tables.load_metrics(store, "zero_shot")
    table = tables.zero_shot_table(rows)
    frame = table.frame
    assert frame["Retention"].notna().any() and frame["Retention"].isna().any()
    assert frame["Note"].str.contains("not counted").any()
    assert frame["Note"].str.contains("no dense").any()
    assert frame["Method"].str.contains(" · ").any()  # label words shown
    assert_matches_reference(rows)
