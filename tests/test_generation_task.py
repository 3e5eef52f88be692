"""The offline generation task sb_facts_gen (``output_type: generate_until``, exact match).

* dense, through ``core.zeroshot.evaluate``: the stored rows are lm-eval's own result values;
* an activation run (CoreInfer) generates sparse: the task's exact match is stored and the kept
  fraction is measured on the generation's decode steps (``int(d_ffn x kept) / d_ffn``), not
  copied from the parameter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.engine import models
from core.engine.evaluate import zeroshot
from core.execution.run import run_and_store
from core.runs.kinds.activation import ActivationSpec
from core.store.db import Store
from core.store.record import create_run
from tests.tiny_assets import tiny_llama_folder

pytest.importorskip("lm_eval")

TASK = "sb_facts_gen"
D_FFN = 64  # tiny_llama_folder's intermediate size


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_llama_folder(tmp_path_factory.mktemp("gen-model") / "tiny"))


def test_task_is_shipped_offline() -> None:
    assert TASK in zeroshot.OFFLINE_TASKS
    assert zeroshot.validate_tasks([TASK]) == []  # the cached task list was rebuilt with it
    folder = zeroshot.TASKS_SOURCE
    docs = [json.loads(line) for line in (folder / f"{TASK}.jsonl").read_text().splitlines()]
    assert len(docs) == 40 and all(d["question"] and d["answer"] for d in docs)
    assert [d["id"] for d in docs] == list(range(40))


def test_stored_rows_equal_lm_eval_results(model_dir: str) -> None:
    model, tokenizer = models.load_model(model_dir)
    result = zeroshot.evaluate(model, tokenizer, [TASK], limit=6, batch_size=3)
    assert not result.failures
    raw = result.raw[TASK]
    rows = {r["metric"]: r for r in result.rows}
    assert set(rows) == {"exact_match"}  # no named filter: "exact_match,none"
    row = rows["exact_match"]
    assert row["value"] == raw["exact_match,none"]
    assert row["stderr"] == raw["exact_match_stderr,none"]
    assert row["n_samples"] == 6 and row["kind"] == "zero_shot" and row["dataset"] == TASK
    assert 0.0 <= row["value"] <= 1.0 and math.isfinite(row["stderr"])


def test_activation_run_generates_sparse(model_dir: str, tmp_path: Path) -> None:
    """token_sparsity 1: every token votes for all its positive neurons, so each prompt has more
    than enough candidates and CoreInfer keeps exactly int(64 x 0.4) = 25 neurons per block in
    every decode step of the generation (batch 2: padded batches count only real neurons)."""
    store = Store(tmp_path / "results.duckdb").init()
    spec = ActivationSpec(model=model_dir, method="coreinfer", sparsity=0.4, token_sparsity=1.0,
                          tasks=[TASK], limit=4, batch_size=2)
    run_id = create_run(store, spec)
    run_and_store(store, run_id, spec)
    assert store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0] == "done"
    metrics = store.frame("SELECT kind, dataset, metric, value, n_samples FROM metrics "
                          "WHERE run_id = ?", [run_id])

    def value(kind: str, dataset: str, metric: str) -> float:
        found = metrics[(metrics["kind"] == kind) & (metrics["dataset"] == dataset)
                        & (metrics["metric"] == metric)]
        assert len(found) == 1, (kind, dataset, metric, metrics)
        return float(found["value"].iloc[0])

    score = metrics[metrics["kind"] == "task"]
    assert score["metric"].tolist() == ["exact_match"] and score["dataset"].tolist() == [TASK]
    assert 0.0 <= score["value"].iloc[0] <= 1.0 and score["n_samples"].iloc[0] == 4

    # the generation decoded (sparse) tokens; multiple choice is not involved in this run
    assert value("activation", "-", "decode_tokens") > 0
    want = math.floor(D_FFN * 0.4) / D_FFN  # 25 / 64 = 0.390625, not the parameter 0.4
    for dataset in (TASK, "-"):
        actual = value("activation", dataset, "actual_sparsity")
        assert 0 < actual < 1
        assert actual == pytest.approx(want) and actual != 0.4
    kept = store.frame("SELECT value FROM layer_stats WHERE run_id = ? AND layer = 'ffn' AND "
                       "stat = 'kept_fraction' ORDER BY block", [run_id])["value"].tolist()
    assert kept == pytest.approx([want, want])
