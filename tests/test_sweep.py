"""Sweeps: one stored run per grid cell, rendered as a rows x columns matrix with the best cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.execution import jobs
from core.execution.run import run_and_store
from core.present import ablations
from core.runs.kinds.prune import PruneSpec
from core.runs.registry import spec_from_dict
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> PruneSpec:
    # Fitted: a random model is no better than uniform guessing, and its cells would collapse.
    folder = tiny_llama_folder(tmp_path_factory.mktemp("sweep-model"), fit_steps=10)
    corpus = folder / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT)
    return PruneSpec(model=str(folder), method="sparsegpt", sparsity="0.5",
                     calibration=str(corpus), samples=2, seqlen=32, ppl_datasets=[str(corpus)],
                     ppl_seqlen=32, max_windows=2)


def run_queue(store: Store) -> None:
    queued = store.frame("SELECT id, spec FROM runs WHERE status = 'queued' ORDER BY id")
    for run_id, spec in zip(queued["id"], queued["spec"], strict=True):
        run_and_store(store, int(run_id), spec_from_dict(json.loads(spec)))


def test_sweep_stores_one_run_per_cell(base: PruneSpec, tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    grid = {"method_params.dampening": [0.01, 0.1], "sparsity": [0.3, 0.5, 0.7]}
    submission = jobs.submit_sweep(store, base, grid)
    assert len(submission.run_ids) == 6 and len(set(submission.run_ids)) == 6
    runs = store.runs().set_index("id")
    assert runs.loc[submission.sweep_id, "kind"] == "sweep"
    cells = runs.loc[submission.run_ids]
    specs = [json.loads(s) for s in cells["spec"]]
    assert {(s["method_params"]["dampening"], s["sparsity"]) for s in specs} == {
        (d, str(p)) for d in (0.01, 0.1) for p in (0.3, 0.5, 0.7)}
    assert all(s["sweep"] == submission.sweep_id for s in specs)
    run_queue(store)
    table = ablations.sweep_cells(store, submission.sweep_id)
    assert len(table) == 6 and (table["status"] == "done").all()
    assert table["ppl"].map(math.isfinite).all()
    matrix, best = ablations.sweep_matrix(table, "method_params.dampening", "sparsity")
    assert matrix.shape == (2, 3)
    assert matrix.loc[best[0], best[1]] == table["ppl"].min()
    # The same sweep again reuses every stored cell.
    again = jobs.submit_sweep(store, base, grid)
    assert again.reused == 6 and again.run_ids == submission.run_ids


def test_bad_grids_are_refused(base: PruneSpec, tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    cases = {
        "model": ({"model": [1, 2]}, "cannot be swept"),
        "text": ({"method_params.dampening": ["a"]}, "must be numbers"),
        "empty": ({"method_params.dampening": []}, "no values"),
        "repeat": ({"method_params.dampening": [0.1, 0.1]}, "repeats"),
        "cell": ({"method_params.dampening": [2.0]}, "dampening"),
        "unknown param": ({"method_params.alpha": [1.0]}, "has no parameter"),
    }
    for name, (grid, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            jobs.submit_sweep(store, base, grid)
        assert store.runs().empty, name
