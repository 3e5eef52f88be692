"""Spec validation, the prune + evaluate pipeline and the command line, on a tiny local model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import cli
from core.engine import models
from core.engine.prune.runner import LinearSparsity, PruneReport
from core.execution.run import run_and_store
from core.runs.kinds.prune import (
    PruneSpec,
    evaluate_perplexity,
    layer_stat_rows,
    perplexity_status,
)
from core.runs.results import RunResult, quiet
from core.runs.specs import check
from core.store import queries
from core.store.db import Store
from core.store.record import create_run
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(SAMPLE_TEXT)
    return str(path)


def tiny_spec(model_dir: Path, corpus: str, **overrides) -> PruneSpec:
    values = dict(model=str(model_dir), method="wanda", sparsity="0.5", calibration=corpus,
                  samples=4, seqlen=32, ppl_datasets=[corpus], ppl_seqlen=32, max_windows=4,
                  batch_size=2)
    values.update(overrides)
    return PruneSpec(**values)


def spec_problems(model_dir: Path, corpus: str, **overrides) -> list[str]:
    """Every problem ``check`` finds in the tiny spec with ``overrides``."""
    values = tiny_spec(model_dir, corpus).to_dict()
    values.update(overrides)
    return check(PruneSpec, values)[1]


def test_validation_messages_say_what_is_allowed(model_dir: Path, corpus: str) -> None:
    assert spec_problems(model_dir, corpus) == []
    cases = {
        "sparsity": ("1.0", "1.0 would remove every weight"),
        "method": ("pruneall", "choose dense or one of"),
        "samples": (0, "Samples: 0 is not a whole number between 1"),
        "ppl_datasets": (["nowhere"], "Evaluation dataset 'nowhere' is unknown"),
        "calibration": ("nowhere", "Calibration source 'nowhere' is unknown"),
        "model": ("./missing/folder", "does not exist"),
        "dtype": ("int3", "Weights dtype: 'int3' is not one of"),
        "method_params": ({"alpha": 1}, "has no parameter"),
    }
    for field, (value, message) in cases.items():
        problems = spec_problems(model_dir, corpus, **{field: value})
        assert any(message in p for p in problems), (field, problems)
    assert any("N < M" in p for p in spec_problems(model_dir, corpus, sparsity="4:4"))


def test_dense_and_pruned_runs_are_stored(model_dir: Path, corpus: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    dense = tiny_spec(model_dir, corpus).dense_baseline()
    pruned = tiny_spec(model_dir, corpus, method="sparsegpt", sparsity="2:4")
    for spec in (dense, pruned):
        run_id = create_run(store, spec)
        run_and_store(store, run_id, spec)
    runs = store.runs().set_index("method")
    assert set(runs["status"]) == {"done"}
    assert runs.loc["sparsegpt", "pattern"] == "2:4" and runs.loc["sparsegpt", "sparsity"] == 0.5
    environment = json.loads(runs.loc["dense", "environment"])
    assert environment["device"] == "cpu" and torch.__version__.startswith(environment["torch"])
    ppl = queries.metric_rows(store, "perplexity").set_index("method")
    assert math.isfinite(ppl.loc["dense", "value"]) and ppl.loc["dense", "n_samples"] == 4 * 32
    assert ppl.loc["sparsegpt", "value"] != ppl.loc["dense", "value"]
    for method in ("dense", "sparsegpt"):  # the 4 windows' NLLs give the stored perplexity
        nlls = ppl.loc[method, "nlls"]
        assert len(nlls) == 4
        assert math.exp(sum(nlls) / 4) == pytest.approx(ppl.loc[method, "value"], rel=1e-9)
    stats = store.frame("SELECT * FROM layer_stats WHERE layer = 'model' AND stat = 'overall'")
    assert stats["value"].tolist() == [0.5]
    linear_rows = store.frame("SELECT * FROM layer_stats WHERE stat = 'sparsity' "
                              "AND layer NOT IN ('block', 'model')")
    assert len(linear_rows) == 2 * 7 and (linear_rows["value"] == 0.5).all()


def test_perplexity_status_rule() -> None:
    assert perplexity_status(48000.0, 49152) == ("ok", None)
    assert perplexity_status(None, 49152) == ("diverged", "non-finite loss: the model diverged")
    assert perplexity_status(49152.0, 49152)[0] == "collapsed"
    assert perplexity_status(6960449.0, 49152) == ("collapsed", (
        "perplexity 6,960,449 is at or above the vocabulary size (49,152): worse than uniform "
        "guessing"))
    assert perplexity_status(6960449.0, None) == ("ok", None)  # unknown vocabulary


def test_a_perplexity_worse_than_uniform_guessing_is_stored_collapsed(
        corpus: str, tmp_path: Path) -> None:
    folder = tiny_llama_folder(tmp_path / "fitted", fit_steps=10)
    spec = tiny_spec(folder, corpus)
    model, tokenizer = models.load_model(str(folder))
    said: list[str] = []
    fitted, inverted = RunResult(), RunResult()
    evaluate_perplexity(model, tokenizer, spec, fitted, quiet, said.append)
    with torch.no_grad():
        model.lm_head.weight.mul_(-5.0)  # confidently wrong: far worse than uniform guessing
    evaluate_perplexity(model, tokenizer, spec, inverted, quiet, said.append)
    ok, collapsed = fitted.metrics[0], inverted.metrics[0]
    assert ok["status"] == "ok" and ok["value"] < 259 and ok["note"] is None
    assert collapsed["status"] == "collapsed" and collapsed["value"] > 1e6  # the value is kept
    assert collapsed["note"].endswith("at or above the vocabulary size (259): worse than "
                                      "uniform guessing")
    assert "collapsed (ppl " in said[-1] and ">= vocabulary size 259)" in said[-1]
    store = Store(tmp_path / "r.duckdb").init()
    store.add_metrics(create_run(store, spec, status="done"), inverted.metrics)
    row = queries.metric_rows(store, "perplexity").iloc[0]
    assert row["status"] == "collapsed" and row["value"] == collapsed["value"]


def test_failed_run_keeps_its_error_and_no_results(model_dir: Path, corpus: str,
                                                   tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    short = tmp_path / "short.txt"
    short.write_text("too short to fill one window")
    spec = tiny_spec(model_dir, corpus, ppl_datasets=[str(short)])  # evaluation fails
    run_id = create_run(store, spec)
    with pytest.raises(ValueError, match="fewer than one window"):
        run_and_store(store, run_id, spec)
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and "fewer than one window" in run["error"]
    assert queries.metric_rows(store).empty and store.frame("SELECT * FROM layer_stats").empty


def test_saved_model_reloads_with_transformers(model_dir: Path, corpus: str,
                                               tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    spec = tiny_spec(model_dir, corpus, method="magnitude", save_dir=str(tmp_path / "saved"))
    run_and_store(store, create_run(store, spec), spec)
    assert list((tmp_path / "saved").glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    weight = reloaded.model.layers[0].mlp.up_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)
    model, _ = models.load_model(str(tmp_path / "saved"))
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, weight)


def test_model_loading_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelLoadError, match="no config.json"):
        models.load_model(str(tmp_path / "empty"))
    with pytest.raises(models.ModelLoadError, match="dtype"):
        models.load_model(str(tmp_path / "empty"), dtype="int3")


def test_layer_stat_rows_summarise_blocks() -> None:
    report = PruneReport([LinearSparsity(0, "a", 5, 10), LinearSparsity(0, "b", 1, 10),
                          LinearSparsity(1, "a", 8, 10)])
    rows = {(r["layer"], r["stat"]): r for r in layer_stat_rows(report)}
    assert rows[("model", "min")]["block"] == 0 and rows[("model", "min")]["value"] == 0.3
    assert rows[("model", "max")]["block"] == 1 and rows[("model", "max")]["value"] == 0.8
    assert rows[("model", "mean")]["value"] == pytest.approx(0.55)
    assert rows[("model", "std")]["value"] == pytest.approx(0.25)
    assert rows[("model", "overall")]["value"] == pytest.approx(14 / 30)


def test_cli_prunes_and_stores(model_dir: Path, corpus: str, tmp_path: Path, capsys) -> None:
    db = tmp_path / "cli.duckdb"
    code = cli.main(["--db", str(db), "prune", "--model", str(model_dir), "--method", "wanda",
                     "--sparsity", "4:8", "--calibration", corpus, "--samples", "2",
                     "--seqlen", "32", "--eval", corpus, "--ppl-seqlen", "32",
                     "--max-windows", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "done" in out and "perplexity" in out
    runs = Store(db).runs()
    own = runs[runs["origin"] == "own"]
    # submitted like the dashboard: the run, then its dense baseline, both executed here
    assert own["pattern"].tolist() == ["4:8", "dense"]
    assert own["status"].tolist() == ["done", "done"]
    assert cli.main(["--db", str(db), "prune", "--sparsity", "2:2"]) == 2
    assert "N < M" in capsys.readouterr().err


def test_owl_run_stores_its_block_targets_and_follows_them(model_dir: Path, corpus: str,
                                                           tmp_path: Path) -> None:
    from core.engine import data
    from core.engine.prune import owl

    store = Store(tmp_path / "r.duckdb").init()
    spec = tiny_spec(model_dir, corpus, method="magnitude", sparsity="0.5",
                     owl={"M": 2.0, "lambda": 0.2})
    assert spec.problems() == []
    run_and_store(store, create_run(store, spec), spec)
    stats = store.frame("SELECT block, stat, value FROM layer_stats "
                        "WHERE layer = 'block' ORDER BY block")
    targets = stats[stats["stat"] == "owl_target"]["value"].tolist()
    measured = stats[stats["stat"] == "sparsity"]["value"].tolist()
    assert len(targets) == len(measured) == 2
    assert sum(targets) / 2 == pytest.approx(0.5, abs=1e-9)
    assert measured == pytest.approx(targets, abs=0.02)
    # Independently: the outlier ratios of the dense model on the same calibration data.
    model, tokenizer = models.load_model(str(model_dir))
    calibration = data.calibration_ids(tokenizer, corpus, spec.samples, spec.seqlen, spec.seed)
    ratios = owl.outlier_ratios(model, calibration, 2.0)
    assert targets == pytest.approx(owl.targets_from_ratios(ratios, 0.5, 0.2))
    if ratios[0] != ratios[1]:
        assert (targets[0] < targets[1]) == (ratios[0] > ratios[1])  # more outliers, less pruned


def test_owl_with_a_block_range_averages_over_the_range(model_dir: Path, corpus: str,
                                                        tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    spec = tiny_spec(model_dir, corpus, method="wanda", sparsity="0.4", block_range=[1, 2],
                     owl={"M": 2.0, "lambda": 0.1})
    run_and_store(store, create_run(store, spec), spec)
    stats = store.frame("SELECT block, stat, value FROM layer_stats "
                        "WHERE layer = 'block' ORDER BY block")
    assert stats[stats["stat"] == "owl_target"]["value"].tolist() == pytest.approx([0.0, 0.4])
    # Wanda prunes floor(0.4 x in_features) per row: the tiny widths round down a little.
    assert stats[stats["stat"] == "sparsity"]["value"].tolist() == pytest.approx([0.0, 0.4],
                                                                                 abs=0.03)


def test_the_cli_says_when_the_baseline_failed(
        model_dir: Path, corpus: str, tmp_path: Path, capsys) -> None:
    """A failed dense baseline leaves nothing queued and does not hide the run's own result:
    the run is done, its metrics print, and the missing comparison is said with the reason."""
    store = Store(tmp_path / "r.duckdb").init()
    run = create_run(store, tiny_spec(model_dir, corpus), status="done")
    store.add_metrics(run, [{"kind": "perplexity", "dataset": corpus, "metric": "ppl",
                             "value": 12.5}])
    baseline = create_run(store, tiny_spec(model_dir, corpus).dense_baseline(), status="failed")
    store.update_run(baseline, error="ModelLoadError: the folder is gone")
    assert cli.conclude(store, run, {run: "done", baseline: "failed"}) == 0
    captured = capsys.readouterr()
    assert "ppl" in captured.out and "12.5000" in captured.out
    assert f"run {baseline} failed: ModelLoadError: the folder is gone" in captured.err
    assert f"the dense baseline (run {baseline}) failed: this run's change from dense" in \
        captured.err
    assert cli.conclude(store, baseline, {baseline: "failed"}) == 1
