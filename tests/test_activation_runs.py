"""The activation-sparsity run kinds end to end on a tiny random Llama (offline task sb_everyday).

* the search stores its trials, its full-set CoreInfer / best / AVG runs, and "% of CoreInfer"
  comes out of ``tables.final_summary`` from those stored scores;
* an activation run stores the kept fraction measured by the hooks, which equals the share of
  neurons CoreInfer keeps (``int(d_ffn x level) / d_ffn``), not the parameter;
* a failing (or cancelled) search leaves nothing half-written;
* the specs' validation messages, and queueing without a dense baseline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.analysis import noise
from core.execution import jobs
from core.execution.run import run_and_store
from core.present import activation as activation_views
from core.present import tables
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.search import SearchSpec
from core.runs.registry import spec_from_dict
from core.runs.specs import check
from core.store.db import Store
from core.store.record import create_run
from tests.test_progress import assert_follows_plan
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

pytest.importorskip("lm_eval")

D_FFN = 64  # tiny_llama_folder's intermediate size
TASK = "sb_everyday"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_llama_folder(tmp_path_factory.mktemp("act-model") / "tiny"))


def new_store(folder: Path) -> Store:
    return Store(folder / "results.duckdb").init()


def search_spec(model: str, **change: object) -> SearchSpec:
    values = {"model": model, "task": TASK, "goal": None, "goal_factor": 0.9,
              "coreinfer_sparsity": 0.5, "token_sparsity": 0.5, "sum_weights": [0.2, 0.5, 0.8],
              "top_k": 8, "n_calibration": 6, "n_search": 4, "full_limit": 8}
    values.update(change)
    return SearchSpec(**values)


@pytest.fixture(scope="module")
def searched(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = new_store(tmp_path_factory.mktemp("search-db"))
    spec = search_spec(model_dir)
    run_id = create_run(store, spec)
    stages: list[tuple[str, int, int]] = []
    run_and_store(store, run_id, spec, progress=lambda s, d, t: stages.append((s, d, t)))
    return {"store": store, "run_id": run_id, "spec": spec, "stages": stages}


def _children(store: Store, run_id: int) -> dict[str, dict]:
    runs = store.frame("SELECT id, kind, method, status, spec FROM runs WHERE id <> ?", [run_id])
    out = {}
    for row in runs.itertuples():
        spec = json.loads(row.spec)
        assert spec["search"] == run_id and row.kind == "activation" and row.status == "done"
        out[spec["config"]] = {"id": int(row.id), "method": row.method, "spec": spec}
    return out


def _metric(store: Store, run_id: int, kind: str, metric: str) -> float:
    frame = store.frame("SELECT value FROM metrics WHERE run_id = ? AND kind = ? AND metric = ?",
                        [run_id, kind, metric])
    assert len(frame) == 1, (run_id, kind, metric, frame)
    return float(frame.iloc[0, 0])


def test_search_stores_trials_with_goal_from_coreinfer(searched: dict) -> None:
    store, run_id, spec = searched["store"], searched["run_id"], searched["spec"]
    assert store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0] == "done"
    children = _children(store, run_id)
    assert set(children) == {"CoreInfer", "best", "AVG"}
    core_actual = _metric(store, children["CoreInfer"]["id"], "activation", "actual_sparsity")
    goal = json.loads(store.frame("SELECT spec FROM runs WHERE id = ?", [run_id]).iloc[0, 0])[
        "goal"]
    assert goal == round(0.9 * core_actual, 4)  # "10% less sparsity" than CoreInfer measured
    assert all(c["spec"]["goal"] == goal for c in children.values())

    trials = store.frame("SELECT * FROM search_trials WHERE run_id = ? ORDER BY trial", [run_id])
    assert trials["trial"].tolist() == [1, 2, 3]
    for row, weight in zip(trials.itertuples(), spec.sum_weights, strict=True):
        params = json.loads(row.params)
        assert params[0] == weight and params[1] == pytest.approx(1 - weight)
        assert params[3] == spec.top_k
        levels = json.loads(row.levels)
        assert len(levels) == 2
        reached = abs(sum(levels) / 2 - goal) <= 0.005 + 1e-9
        assert reached or "misses the goal" in row.note  # bisection, or said why not
        assert 0 < row.actual_sparsity <= 1 and row.metric == "acc_norm"
        assert 0 <= row.value <= 1 and row.n_samples == spec.n_search
    stages = [s for s, _, _ in searched["stages"]]
    assert "calibration scores" in stages and "AVG on the full set" in stages
    assert_follows_plan(spec, searched["stages"])  # every stage weighted, in order, to 100%


def test_search_final_rows_and_percent_of_coreinfer(searched: dict) -> None:
    store, run_id = searched["store"], searched["run_id"]
    children = _children(store, run_id)
    trials = store.frame("SELECT trial, levels, value FROM search_trials WHERE run_id = ? "
                         "ORDER BY trial", [run_id])
    values = trials["value"].tolist()
    best_trial = values.index(max(values)) + 1
    assert children["best"]["spec"]["trial"] == best_trial
    assert children["best"]["spec"]["levels"] == json.loads(trials["levels"][best_trial - 1])
    vectors = [json.loads(v) for v in trials["levels"]]
    avg = [sum(col) / len(col) for col in zip(*vectors, strict=True)]
    assert children["AVG"]["spec"]["levels"] == pytest.approx(avg)
    assert children["CoreInfer"]["method"] == "coreinfer"
    # the configured levels are what ran: the AVG run's per-block configured fractions
    stats = store.frame("SELECT block, value FROM layer_stats WHERE run_id = ? AND "
                        "stat = 'configured_fraction' ORDER BY block", [children["AVG"]["id"]])
    assert stats["value"].tolist() == pytest.approx(avg)

    score = {c: _metric(store, children[c]["id"], "task", "acc_norm") for c in children}
    finals = tables.final_rows(tables.load_metrics(store, "task"),
                               tables.load_metrics(store, "activation"))
    assert sorted(finals["config"]) == ["AVG", "CoreInfer", "best"]
    summary = tables.final_summary(finals).frame
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["Task"] == TASK and row["CoreInfer"] == score["CoreInfer"]
    if score["CoreInfer"]:
        assert row["Best %"] == pytest.approx(score["best"] / score["CoreInfer"] * 100)
        assert row["AVG %"] == pytest.approx(score["AVG"] / score["CoreInfer"] * 100)
    table = tables.final_table(finals).frame
    measured = {c: _metric(store, children[c]["id"], "activation", "actual_sparsity")
                for c in children}
    for rec in table.to_dict("records"):
        assert rec["Actual sparsity"] == measured[{"coreinfer": "CoreInfer", "best": "best",
                                                   "avg": "AVG"}[rec["_config"]]]

    loaded = tables.load_search_trials(store)
    search = tables.search_table(loaded, run_id).frame
    assert list(search.columns[:3]) == ["Params", "Actual sparsity", "Accuracy (norm)"]
    first = json.loads(store.frame("SELECT params FROM search_trials WHERE run_id = ? AND "
                                   "trial = 1", [run_id]).iloc[0, 0])
    assert search["Params"].iloc[0] == tables.params_label(first)
    assert search["Params"].iloc[0].startswith("[0.2, 0.8, ")


def test_activation_run_measures_the_kept_share(model_dir: str, tmp_path: Path) -> None:
    """token_sparsity 1: every token votes for all its positive neurons, so each prompt has more
    than enough candidates and CoreInfer keeps exactly int(64 x level) neurons per block."""
    store = new_store(tmp_path)
    spec = ActivationSpec(model=model_dir, method="sparsity-levels", levels=[0.3, 0.5],
                          token_sparsity=1.0, tasks=[TASK], limit=4)
    run_id = create_run(store, spec)
    run_and_store(store, run_id, spec)
    stats = store.frame("SELECT block, stat, value FROM layer_stats WHERE run_id = ? AND "
                        "layer = 'ffn'", [run_id])
    kept = stats[stats["stat"] == "kept_fraction"].sort_values("block")["value"].tolist()
    want = [math.floor(D_FFN * 0.3) / D_FFN, math.floor(D_FFN * 0.5) / D_FFN]
    assert kept == pytest.approx(want)
    assert kept[0] != 0.3  # measured, not the parameter
    overall = store.frame("SELECT value FROM metrics WHERE run_id = ? AND kind = 'activation' "
                          "AND metric = 'actual_sparsity' AND dataset = '-'", [run_id])
    assert overall.iloc[0, 0] == pytest.approx(sum(want) / 2)
    score = store.frame("SELECT metric, value FROM metrics WHERE run_id = ? AND kind = 'task'",
                        [run_id])
    assert score["metric"].tolist() == ["acc_norm"] and 0 <= score["value"].iloc[0] <= 1
    finals = tables.final_rows(tables.load_metrics(store, "task"),
                               tables.load_metrics(store, "activation"))
    assert finals.empty  # not part of a search: no CoreInfer / best / AVG row


def test_activation_perplexity_worse_than_uniform_guessing_is_collapsed(tmp_path: Path) -> None:
    from core.engine import models

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT)
    fitted = tiny_llama_folder(tmp_path / "fitted", fit_steps=10)
    model, tokenizer = models.load_model(str(fitted))
    model.lm_head.weight.data.mul_(-5.0)  # confidently wrong: far worse than uniform guessing
    model.save_pretrained(tmp_path / "inverted")
    tokenizer.save_pretrained(tmp_path / "inverted")
    store = new_store(tmp_path)
    for folder in (fitted, tmp_path / "inverted"):
        spec = ActivationSpec(model=str(folder), method="coreinfer", sparsity=0.5,
                              ppl_datasets=[str(corpus)], ppl_seqlen=32, max_windows=2)
        run_and_store(store, create_run(store, spec), spec)
    rows = store.frame("SELECT status, value, note FROM metrics WHERE kind = 'activation' AND "
                       "metric = 'ppl' ORDER BY run_id")
    assert rows["status"].tolist() == ["ok", "collapsed"]
    assert rows["value"].iloc[0] < 259 < rows["value"].iloc[1]  # the collapsed value is kept
    assert rows["note"].iloc[1].startswith("perplexity ") and "(259): worse than uniform " \
        "guessing; 2 windows of 32" in rows["note"].iloc[1]
    # the fitted run's windows reproduce its perplexity and give it an interval in the table
    windows = store.frame("SELECT run_id, nlls FROM window_nlls ORDER BY run_id")
    nlls = list(windows["nlls"].iloc[0])
    assert len(nlls) == 2 and math.exp(sum(nlls) / 2) == pytest.approx(rows["value"].iloc[0])
    table = activation_views.activation_runs_table(tables.load_metrics(store, "task"),
                                                   tables.load_metrics(store, "activation"))
    shown = table.display().set_index("Run")
    low, high = noise.ppl_interval(nlls)
    assert low < rows["value"].iloc[0] < high
    assert shown.loc[str(windows["run_id"].iloc[0]), "95% interval"] == \
        f"{low:.2f} to {high:.2f}"


def test_failed_search_leaves_nothing_half_written(model_dir: str, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    spec = search_spec(model_dir, goal=0.4, goal_factor=None, full_limit=2)
    run_id = create_run(store, spec)

    def progress(stage: str, done: int, _total: int) -> None:
        if stage == "search configurations" and done == 1:  # configuration 2 starts
            raise KeyboardInterrupt("stopped")  # what a cancel does to the child, in effect

    with pytest.raises(KeyboardInterrupt):
        run_and_store(store, run_id, spec, progress=progress)
    for table in ("metrics", "layer_stats", "search_trials"):
        assert store.frame(f"SELECT count(*) FROM {table}").iloc[0, 0] == 0, table
    assert store.frame("SELECT count(*) FROM runs").iloc[0, 0] == 1  # no child run either


def problems_of(cls: type, **values: object) -> list[str]:
    """Every problem ``check`` finds in a spec built from ``values``."""
    return check(cls, values)[1]


def test_search_spec_messages() -> None:
    problems = problems_of(SearchSpec, model="./nope/model", task="no_such_task_xyz", goal=1.5,
                           sum_weights=[0.2, 1.2, 0.2], top_k=0, n_calibration=0, n_search=0,
                           block_range=[3, 1], device="gpu", tolerance=0.5)
    expected = ["Model: the folder './nope/model' does not exist",
                "Task 'no_such_task_xyz' is not an lm-eval task",
                "Goal (mean kept fraction): 1.5 is not a number above 0 and below 1",
                "Sum weights: [1.2] are outside [0, 1]",
                "Sum weights: a value is repeated",
                "Top-k: 0 is not a whole number between 1",
                "Calibration prompts: 0 is not a whole number between 1 and 4096",
                "Search samples: 0 is not a whole number",
                "Block range: give [start, end) with 0 <= start < end",
                "Device: 'gpu' is not one of auto, cpu, cuda, cuda:N or mps",
                "Tolerance: 0.5 is not a number in (0, 0.1]"]
    for part in expected:
        assert any(part in p for p in problems), (part, problems)
    assert len(problems) == len(expected), problems
    neither = problems_of(SearchSpec, goal=None, goal_factor=None)
    assert any(p.startswith("Goal (mean kept fraction): give one") for p in neither)
    assert problems_of(SearchSpec, goal=None, goal_factor=0.9) == []
    assert problems_of(SearchSpec) == []


def test_activation_spec_messages() -> None:
    assert problems_of(ActivationSpec, tasks=[TASK]) == []
    problems = problems_of(ActivationSpec, method="coreinfer", sparsity=0.0, token_sparsity=2)
    assert any(p.startswith("Kept fraction (sparsity): 0.0 is not a number above 0")
               for p in problems)
    assert any(p.startswith("Token sparsity: 2") for p in problems)
    assert any(p.startswith("Evaluation: choose at least one") for p in problems)
    levels = problems_of(ActivationSpec, method="sparsity-levels", levels=None, tasks=[TASK])
    assert levels == ["Levels: give one kept fraction per converted block, e.g. 0.35, 0.4, "
                      "0.45 (each between 0 and 1)."]
    wrong = problems_of(ActivationSpec, method="sparsity-levels", levels=[0.4, 1.3, 0.2],
                        block_range=[0, 2], tasks=[TASK])
    assert any("[1.3] are not kept fractions" in p for p in wrong)
    assert any("3 values for the block range [0, 2]" in p for p in wrong)
    assert any("'lasso' is unknown" in p for p in problems_of(ActivationSpec, method="lasso",
                                                                  tasks=[TASK]))


def test_specs_round_trip_and_queue_without_dense_baseline(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    search = SearchSpec(goal=None, goal_factor=0.9)
    assert spec_from_dict(search.to_dict()) == search
    act = ActivationSpec(method="sparsity-levels", levels=[0.4, 0.5], tasks=[TASK])
    assert spec_from_dict(json.loads(json.dumps(act.to_dict()))) == act
    first = jobs.submit(store, search)
    assert first.baseline_id is None and not first.reused
    again = jobs.submit(store, search)
    assert again.reused and again.run_id == first.run_id
    other = jobs.submit(store, act)
    assert other.baseline_id is None
    runs = store.frame("SELECT kind, method, pattern, sparsity FROM runs ORDER BY id")
    assert runs["kind"].tolist() == ["search", "activation"]  # no dense run was queued
    assert runs["method"].tolist() == ["sparsity-levels", "sparsity-levels"]
    assert runs["pattern"].tolist() == ["activation", "activation"]
    assert runs["sparsity"].isna().all()  # the parameter is not a measured sparsity


def test_headline_metric_is_found_under_an_lm_eval_filter() -> None:
    """triviaqa reports 'exact_match,remove_whitespace': stored as 'exact_match
    (remove_whitespace)', it is still the exact_match a search scores."""
    from core.runs.kinds.activation import pick_metric

    rows = [{"dataset": "triviaqa", "metric": "exact_match (remove_whitespace)", "value": 0.25},
            {"dataset": "other", "metric": "exact_match", "value": 0.9}]
    assert pick_metric(rows, "triviaqa", "exact_match")["value"] == 0.25
    assert pick_metric(rows, "triviaqa")["value"] == 0.25
    rows.append({"dataset": "triviaqa", "metric": "exact_match", "value": 0.5})
    assert pick_metric(rows, "triviaqa", "exact_match")["value"] == 0.5  # unfiltered first
    with pytest.raises(ValueError, match="'bleu' is not reported by triviaqa"):
        pick_metric(rows, "triviaqa", "bleu")
