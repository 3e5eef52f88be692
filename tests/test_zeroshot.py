"""Zero-shot through lm-evaluation-harness on the model in memory, with offline local tasks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.engine import models
from core.engine.evaluate import zeroshot
from core.execution import jobs
from core.execution.run import run_and_store
from core.runs.kinds.prune import PruneSpec
from core.store import queries
from core.store.db import Store
from core.store.record import create_run
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

BROKEN_TASK = """task: sb_broken
dataset_path: json
dataset_kwargs:
  data_files:
    test: /nonexistent/sb_broken.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{goal}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("zs-model"))
    corpus = folder / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT)
    model, tokenizer = models.load_model(str(folder))
    return folder, corpus, model, tokenizer


def test_stored_rows_equal_lm_eval_results(tiny) -> None:
    _, _, model, tokenizer = tiny
    result = zeroshot.evaluate(model, tokenizer, ["sb_everyday"], limit=12, batch_size=4)
    assert not result.failures
    raw = result.raw["sb_everyday"]
    rows = {r["metric"]: r for r in result.rows}
    assert set(rows) == {"acc", "acc_norm"}
    for metric in ("acc", "acc_norm"):
        assert rows[metric]["value"] == raw[f"{metric},none"]
        assert rows[metric]["stderr"] == raw[f"{metric}_stderr,none"]
        assert rows[metric]["n_samples"] == 12
        assert 0.0 <= rows[metric]["value"] <= 1.0


def test_task_with_missing_data_fails_alone(tiny, tmp_path: Path) -> None:
    _, _, model, tokenizer = tiny
    (tmp_path / "sb_broken.yaml").write_text(BROKEN_TASK)
    result = zeroshot.evaluate(model, tokenizer, ["sb_broken", "sb_everyday"], limit=4,
                               extra_task_dir=str(tmp_path))
    assert set(result.failures) == {"sb_broken"}
    assert "sb_everyday" in result.raw
    broken = [r for r in result.rows if r["dataset"] == "sb_broken"]
    assert broken and broken[0]["status"] == "missing" and "task failed" in broken[0]["note"]


def test_unknown_task_is_refused_before_queueing(tiny, tmp_path: Path) -> None:
    folder, corpus, _, _ = tiny
    store = Store(tmp_path / "r.duckdb").init()
    spec = PruneSpec(model=str(folder), method="magnitude", ppl_datasets=[],
                     zero_shot_tasks=["sb_everyday", "no_such_task_xyz"])
    problems = spec.problems()
    assert any("no_such_task_xyz" in p and "not an lm-eval task" in p for p in problems)
    with pytest.raises(ValueError, match="no_such_task_xyz"):
        jobs.submit(store, spec)
    assert store.runs().empty
    assert zeroshot.validate_tasks(["piqa", "sb_wiki_next"]) == []


def test_pipeline_stores_zero_shot_with_stderr_and_version(tiny, tmp_path: Path) -> None:
    folder, corpus, _, _ = tiny
    store = Store(tmp_path / "r.duckdb").init()
    spec = PruneSpec(model=str(folder), method="magnitude", sparsity="0.5",
                     ppl_datasets=[str(corpus)], ppl_seqlen=32, max_windows=2,
                     zero_shot_tasks=["sb_everyday"], zs_limit=8)
    for item in (spec.dense_baseline(), spec):
        run_and_store(store, create_run(store, item), item)
    rows = queries.metric_rows(store, "zero_shot")
    assert len(rows) == 4 and set(rows["method"]) == {"dense", "magnitude"}
    assert rows["stderr"].notna().all() and (rows["n_samples"] == 8).all()
    assert all(note == f"lm-eval {zeroshot.lm_eval_version()}" for note in rows["note"])
    env = store.frame("SELECT environment FROM runs")["environment"]
    assert all(zeroshot.lm_eval_version() in e for e in env)
    acc = rows[rows["metric"] == "acc"].set_index("method")["value"]
    assert math.isfinite(acc["dense"]) and math.isfinite(acc["magnitude"])


def test_prepared_tasks_follow_the_checkout_they_came_from(tmp_path: Path, monkeypatch) -> None:
    """Two checkouts with the same task files share one cache but each reads its own data."""
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    prepared = []
    for name in ("checkout-a", "checkout-b"):
        source = tmp_path / name
        source.mkdir()
        for path in zeroshot.TASKS_SOURCE.iterdir():
            (source / path.name).write_bytes(path.read_bytes())
        prepared.append(zeroshot.local_task_dir(source))
    assert prepared[0] != prepared[1]
    for name, folder in zip(("checkout-a", "checkout-b"), prepared, strict=True):
        text = (folder / "sb_everyday.yaml").read_text()
        assert str(tmp_path / name / "sb_everyday.jsonl") in text
