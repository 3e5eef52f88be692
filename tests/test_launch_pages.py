"""The Launch and Runs pages under ``streamlit.testing.v1.AppTest``.

Launch: every bad value is reported by field with what is allowed, and nothing is queued; a good
submission queues the run and its dense baseline, a second one reuses them.  Runs: the list,
progress, errors, Cancel and Re-run on runs written straight into the store.  No worker is ever
started here (``LocalExecutor.ensure_workers`` is replaced by a recorder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.execution.local import LocalExecutor
from core.present import runs as run_views
from core.present import tables
from core.runs.kinds.prune import PruneSpec
from core.runs.progress import Stage, Tracker
from core.store import published
from core.store.db import Store
from core.store.record import create_run
from tests.page_helpers import open_page, widget
from tests.tiny_assets import model_and_text

LOCAL = "a local .txt file…"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return model_and_text(tmp_path_factory.mktemp("launch-assets"))


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", str(path))
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    # The published figures play no part here: skip their import to keep each run quick.
    monkeypatch.setattr(published, "FIGURES", tmp_path / "none.csv")
    monkeypatch.setattr(published, "TRIALS", tmp_path / "none-trials.csv")
    return path


@pytest.fixture
def store(db: Path) -> Store:
    return Store(db).init()


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls to ``ensure_workers`` (which starts nothing here)."""
    calls: list[int] = []

    def ensure(self: LocalExecutor) -> list[str]:
        calls.append(1)
        return []

    monkeypatch.setattr(LocalExecutor, "ensure_workers", ensure)
    return calls


def own_runs(db: Path) -> pd.DataFrame:
    return Store(db).frame("SELECT id, status, method, spec FROM runs "
                           "WHERE origin = 'own' ORDER BY id")


def newest_pruned(db: Path) -> pd.Series:
    """The newest own run that is not a dense baseline (queued after its run since the user's
    run goes first)."""
    runs = own_runs(db)
    return runs[runs["method"] != "dense"].iloc[-1]


# -- the Launch page ------------------------------------------------------------------------------
def fill_launch(at: AppTest, assets: dict[str, str], **change: object) -> AppTest:
    """Fill the form with a tiny valid Wanda run (local model and texts), apply ``change``, submit.

    ``change`` keys: model, method, sparsity, block, device, calibration_path, eval_choice,
    eval_paths.
    """
    widget(at.selectbox, "Method").set_value(change.get("method", "wanda")).run()
    if "Calibration text" in [s.label for s in at.selectbox]:
        widget(at.selectbox, "Calibration text").set_value(LOCAL)
    widget(at.multiselect, "Evaluation datasets").set_value(change.get("eval_choice", [LOCAL]))
    at.run()
    widget(at.text_input, "Model name or folder").set_value(change.get("model", assets["model"]))
    widget(at.text_input, "Device").set_value(change.get("device", "cpu"))
    if "Sparsity" in [t.label for t in at.text_input]:
        widget(at.text_input, "Sparsity").set_value(change.get("sparsity", "0.5"))
        widget(at.text_input, "Block range (optional)").set_value(change.get("block", ""))
    if "Calibration .txt file" in [t.label for t in at.text_input]:
        widget(at.text_input, "Calibration .txt file").set_value(
            change.get("calibration_path", assets["text"]))
        widget(at.number_input, "Samples").set_value(2)
        widget(at.number_input, "Tokens per sample").set_value(32)
    if "Evaluation .txt files (comma separated)" in [t.label for t in at.text_input]:
        widget(at.text_input, "Evaluation .txt files (comma separated)").set_value(
            change.get("eval_paths", assets["text"]))
    widget(at.number_input, "Window length (tokens)").set_value(32)
    widget(at.number_input, "Max windows (0 = all)").set_value(4)
    widget(at.number_input, "Batch size").set_value(1)
    if "owl" in change:
        widget(at.checkbox, "OWL layer-wise sparsity").check().run()
        widget(at.number_input, "OWL lambda (max deviation)").set_value(change["owl"])
    widget(at.multiselect, "Zero-shot tasks").set_value(change.get("tasks", []))
    widget(at.text_input, "Other lm-eval task names (comma separated)").set_value(
        change.get("other_tasks", ""))
    widget(at.text_area, "Grid: one parameter per line, name = values").set_value(
        change.get("sweep", ""))
    at.run()
    if "zs_limit" in change:
        widget(at.number_input, "Examples per task (0 = all)").set_value(change["zs_limit"])
    widget(at.button, "Queue run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


BAD_VALUES = {
    "sparsity 1.0": ({"sparsity": "1.0"}, ["Sparsity:", "[0, 1)"]),
    "sparsity 4:4": ({"sparsity": "4:4"}, ["Sparsity:", "0 < N < M", "2:4"]),
    "sparsity abc": ({"sparsity": "abc"}, ["Sparsity:", "0.5, 50% or N:M"]),
    "missing model folder": ({"model": "./nope/model"}, ["Model:", "nope/model",
                                                         "does not exist"]),
    "no evaluation dataset": ({"eval_choice": []}, ["Evaluation:", "at least one"]),
    "block range 3,1": ({"block": "3,1"}, ["Block range:", "0 <= start < end"]),
    "block range x": ({"block": "x"}, ["Block range:", "two whole numbers", "0,15"]),
    "device gpu": ({"device": "gpu"}, ["Device:", "'gpu'", "auto, cpu, cuda, cuda:N or mps"]),
    "device cuda": ({"device": "cuda:7"}, ["Device:", "not available on this machine"]),
    "calibration file missing": ({"calibration_path": "/nope/calib.txt"},
                                 ["Calibration text:", "/nope/calib.txt", "does not exist",
                                  ".txt file"]),
    "calibration path empty": ({"calibration_path": ""},
                               ["Calibration text:", "enter the path of a .txt file"]),
    "evaluation file missing": ({"eval_paths": "/nope/eval.txt"},
                                ["Evaluation:", "/nope/eval.txt", "does not exist"]),
    "unknown zero-shot task": ({"other_tasks": "no_such_task"},
                               ["Zero-shot task", "no_such_task", "not an lm-eval task",
                                "sb_everyday"]),
    "sweep value not a number": ({"sweep": "method_params.alpha = 0.1, big"},
                                 ["Sweep line 1", "'big' is not a number"]),
    "sweep of a fixed field": ({"sweep": "model = 1, 2"},
                               ["Sweep:", "'model' cannot be swept", "method_params.<name>"]),
    "OWL with N:M": ({"sparsity": "2:4", "owl": 0.08}, ["OWL:", "not N:M"]),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_reported_and_nothing_is_queued(db: Path, workers: list[int],
                                                       assets: dict[str, str],
                                                       case: str) -> None:
    change, expected = BAD_VALUES[case]
    at = fill_launch(open_page("pages/launch.py"), assets, **change)
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert message.startswith("Nothing was queued.")
    problems = [line for line in message.splitlines() if line.startswith("- ")]
    assert len(problems) == 1, problems  # only the bad field, said once
    for part in expected:
        assert part in problems[0], (part, problems[0])
    assert not at.success
    assert own_runs(db).empty
    assert not workers


def test_owl_and_zero_shot_settings_reach_the_stored_spec(db: Path, workers: list[int],
                                                         assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets, owl=0.1, tasks=["sb_everyday"],
                     other_tasks="sb_wiki_next", zs_limit=5)
    assert not at.error, [e.value for e in at.error]
    runs = own_runs(db)
    pruned = json.loads(runs[runs["method"] == "wanda"]["spec"].iloc[0])
    assert pruned["owl"] == {"M": 5.0, "lambda": 0.1}
    assert pruned["zero_shot_tasks"] == ["sb_everyday", "sb_wiki_next"]
    assert pruned["zs_limit"] == 5 and pruned["num_fewshot"] == 0
    dense = json.loads(runs[runs["method"] == "dense"]["spec"].iloc[0])
    assert dense["zero_shot_tasks"] == pruned["zero_shot_tasks"] and dense["owl"] is None


def test_sweep_queues_one_run_per_cell(db: Path, workers: list[int],
                                       assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets,
                     sweep="sparsity = 0.3, 0.5\nseed = 0, 1")
    assert not at.error, [e.value for e in at.error]
    assert "Queued sweep" in at.success[0].value and "4 cell(s)" in at.success[0].value
    stored = Store(db).frame("SELECT kind, method, spec FROM runs WHERE origin = 'own'")
    assert (stored["kind"] == "sweep").sum() == 1
    cells = [json.loads(s) for s in stored[stored["method"] == "wanda"]["spec"]]
    cells = [c for c in cells if c.get("sweep")]
    assert sorted((c["sparsity"], c["seed"]) for c in cells) == [
        ("0.3", 0), ("0.3", 1), ("0.5", 0), ("0.5", 1)]
    assert workers


def test_every_problem_is_listed_at_once_in_form_order(db: Path, workers: list[int],
                                                       assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets, model="./nope/model", device="gpu",
                     sparsity="abc", block="x", eval_choice=[])
    problems = [line[2:] for line in at.error[0].value.splitlines() if line.startswith("- ")]
    assert [p.split(":")[0] for p in problems] == ["Model", "Device", "Sparsity", "Block range",
                                                    "Evaluation"]
    assert own_runs(db).empty and not workers


def test_valid_run_is_queued_with_its_dense_baseline_then_reused(
        db: Path, workers: list[int], assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets)
    assert not at.error, [e.value for e in at.error]
    runs = own_runs(db)
    assert runs["status"].tolist() == ["queued", "queued"]
    assert runs["method"].tolist() == ["wanda", "dense"]  # the run first, then its baseline
    run_id, baseline_id = runs["id"].tolist()
    spec = json.loads(runs["spec"].iloc[0])
    assert spec["model"] == assets["model"]
    assert spec["calibration"] == assets["text"] and spec["ppl_datasets"] == [assets["text"]]
    assert (spec["samples"], spec["seqlen"], spec["ppl_seqlen"], spec["max_windows"],
            spec["batch_size"]) == (2, 32, 32, 4, 1)
    assert len(at.success) == 1
    success = at.success[0].value
    assert f"Queued run {run_id}: Wanda 50% on tiny-model." in success
    assert f"dense baseline (for the change from dense) is run {baseline_id}, queued" in success
    assert workers == [1]  # the page makes sure a worker drains the queue
    assert any(link.label == "Follow it on the Runs page" for link in at.get("page_link"))

    again = fill_launch(at, assets)
    assert not again.error and not again.success
    assert len(again.info) == 1 and "reused" in again.info[0].value
    assert f"run {run_id}" in again.info[0].value
    assert own_runs(db)["id"].tolist() == [run_id, baseline_id]  # nothing new


def test_run_again_queues_a_fresh_copy(db: Path, workers: list[int],
                                       assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets)
    widget(at.checkbox, "Run again even if an identical run is stored").check()
    widget(at.button, "Queue run").click().run()
    # still queued: never a second identical active run, the pending one is the answer
    assert at.info and not at.success
    assert own_runs(db)["method"].tolist() == ["wanda", "dense"]
    store = Store(db)
    for run_id in own_runs(db)["id"]:
        store.move(int(run_id), "running")
        store.move(int(run_id), "done")
    widget(at.button, "Queue run").click().run()  # finished: "run again" queues a fresh copy
    assert at.success and "Queued run" in at.success[0].value
    assert own_runs(db)["method"].tolist() == ["wanda", "dense", "wanda"]  # one baseline


def test_dense_and_magnitude_runs_need_no_calibration(db: Path, workers: list[int],
                                                      assets: dict[str, str]) -> None:
    at = fill_launch(open_page("pages/launch.py"), assets, method="magnitude")
    assert "Calibration text" not in [s.label for s in at.selectbox]
    assert not at.error, [e.value for e in at.error]
    at = fill_launch(at, assets, method="dense")
    assert "Sparsity" not in [t.label for t in at.text_input]
    assert not at.error, [e.value for e in at.error]
    assert at.info and "reused" in at.info[0].value  # the magnitude run queued this baseline
    assert own_runs(db)["method"].tolist() == ["magnitude", "dense"]


def test_relative_paths_are_stored_absolute(db: Path, workers: list[int], assets: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs in the repository folder: a relative path must not change meaning."""
    at = open_page("pages/launch.py")
    monkeypatch.chdir(Path(assets["model"]).parent)
    at = fill_launch(at, assets, model="./tiny-model", calibration_path="sample.txt",
                     eval_paths="./sample.txt")
    assert not at.error, [e.value for e in at.error]
    spec = json.loads(newest_pruned(db)["spec"])
    assert spec["model"] == assets["model"]
    assert spec["calibration"] == assets["text"] and spec["ppl_datasets"] == [assets["text"]]


def test_read_only_store_cannot_launch(store: Store, workers: list[int],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import core.store.db

    monkeypatch.setattr(core.store.db, "_writable", lambda path: False)
    at = open_page("pages/launch.py")
    assert at.error and "read-only" in at.error[0].value
    assert not [b for b in at.button if b.label == "Queue run"]


# -- the Runs page --------------------------------------------------------------------------------
def make_run(store: Store, assets: dict[str, str], status: str, method: str = "wanda",
             sparsity: str = "0.5", model: str | None = None, **update: object) -> int:
    spec = PruneSpec(model=model or assets["model"], method=method, sparsity=sparsity,
                     calibration=assets["text"], samples=2, seqlen=32,
                     ppl_datasets=[assets["text"]], ppl_seqlen=32, max_windows=4, batch_size=1)
    run_id = create_run(store, spec, status=status)
    progress = update.pop("progress", None)
    if update.pop("beat", False):
        store.control.beat(run_id, "test-worker")
    if progress:
        extra = {k: v for k, v in progress.items() if k not in ("stage", "done", "total")}
        store.control.set_progress(run_id, progress["stage"], progress["done"], progress["total"],
                                   extra)
    if update:
        store.update_run(run_id, **update)
    return run_id


@pytest.fixture
def runs(store: Store, assets: dict[str, str]) -> dict[str, int]:
    """One run in each state, the running one half-way through pruning."""
    now = datetime.now()
    ids = {
        "done": make_run(store, assets, "done", "magnitude", started_at=now - timedelta(
            seconds=75), finished_at=now - timedelta(seconds=10)),
        "failed": make_run(store, assets, "failed", "wanda", "2:4",
                           started_at=now - timedelta(seconds=9), finished_at=now,
                           error="RuntimeError: boom at block 7\nTraceback line",
                           progress={"stage": "pruning", "done": 7, "total": 30}),
        "cancelled": make_run(store, assets, "cancelled", "wanda", "0.6", finished_at=now,
                              error="cancelled before it started"),
        "running": make_run(store, assets, "running", "wanda", "0.5",
                            started_at=now - timedelta(seconds=5), beat=True,
                            progress={"stage": "pruning", "done": 3, "total": 30}),
        "queued": make_run(store, assets, "queued", "magnitude", "0.7"),
    }
    store.add_metrics(ids["done"], [
        {"kind": "perplexity", "dataset": assets["text"], "metric": "ppl", "value": 123.456,
         "n_samples": 128},
        {"kind": "sparsity", "dataset": "-", "metric": "measured", "value": 0.5},
        {"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": 0.25},
    ])
    for line in ("loading tiny-model", "pruning with magnitude to 50%", "done"):
        store.append_log(ids["done"], line)
    store.append_log(ids["failed"], "failed: RuntimeError: boom at block 7")
    return ids


def pick(at: AppTest, run_id: int) -> AppTest:
    widget(at.selectbox, "Run").set_value(run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def status_of(db: Path, run_id: int) -> str:
    return Store(db).frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0]


def test_runs_page_without_runs(store: Store, workers: list[int]) -> None:
    at = open_page("pages/runs.py")
    assert not at.error
    assert at.info and "No runs yet" in at.info[0].value
    assert not at.dataframe


def test_runs_page_lists_every_state_readably(db: Path, workers: list[int],
                                              runs: dict[str, int]) -> None:
    at = open_page("pages/runs.py")
    assert not at.error and not at.exception
    assert workers, "the page makes sure a worker serves the queue"
    assert any("**1** running" in m.value and "**1** queued" in m.value and
               "**1** failed" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert table["Run"].tolist() == sorted(runs.values(), reverse=True)
    by_id = table.set_index("Run")
    assert by_id.loc[runs["running"], "Status"] == "running"
    assert by_id.loc[runs["running"], "Progress"] == pytest.approx(10.0)
    assert pd.isna(by_id.loc[runs["failed"], "Progress"])  # a finished run shows no bar
    assert by_id.loc[runs["failed"], "Method"] == "Wanda 2:4 · calibration sample.txt 2×32, seed 0"
    assert by_id.loc[runs["failed"], "Error"] == "RuntimeError: boom at block 7"
    assert by_id.loc[runs["done"], "Duration"] == "1 min 05 s"
    assert by_id.loc[runs["done"], "Model"] == "tiny-model"
    text = table.drop(columns=["Run", "Progress"]).astype(str)
    assert not text.isin(["None", "nan", "NaT", "NaN"]).any().any()
    bars = [p for p in at.get("progress")]
    assert any("pruning: block 3 of 30" in p.text and f"Run {runs['running']}" in p.text
               for p in bars)
    # The details open on the running run, with its progress and a Cancel button.
    assert widget(at.selectbox, "Run").value == runs["running"]
    assert any(p.text == "pruning: block 3 of 30" and p.value == 10 for p in bars)
    assert [b.label for b in at.button] == ["Cancel", "Save"]  # no Archive while active


def test_runs_page_shows_a_page_of_runs_at_a_time(db: Path, workers: list[int], store: Store,
                                                   assets: dict[str, str]) -> None:
    spec = PruneSpec(model=assets["model"], method="wanda", sparsity="0.5",
                     calibration=assets["text"], samples=2, seqlen=32,
                     ppl_datasets=[assets["text"]], ppl_seqlen=32, max_windows=4)
    ids = [create_run(store, spec.model_copy(update={"seed": seed}), status="done")
           for seed in range(118)]
    failed = make_run(store, assets, "failed", "magnitude", error="boom")
    running = make_run(store, assets, "running", "wanda", "0.6", beat=True,
                       progress={"stage": "pruning", "done": 1, "total": 30})
    at = open_page("pages/runs.py")
    assert not at.exception
    assert any("**1** running" in m.value and "**118** done" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert table["Run"].tolist() == [running, failed, *sorted(ids, reverse=True)[:48]]
    picker = widget(at.selectbox, "Run")
    assert picker.value == running and len(picker.options) == run_views.PAGE_ROWS
    widget(at.number_input, "Page").set_value(3).run()
    assert at.dataframe[0].value["Run"].tolist() == sorted(ids, reverse=True)[98:]
    assert any("Page 3 of 3: 20 of 120 matching runs shown" in c.value for c in at.caption)
    widget(at.multiselect, "Status").set_value(["failed"]).run()
    assert at.dataframe[0].value["Run"].tolist() == [failed]  # the page is clamped to 1
    assert widget(at.selectbox, "Run").value == running  # the pick survives the filter


def test_failed_run_shows_its_error_and_can_be_rerun(db: Path, workers: list[int],
                                                     runs: dict[str, int]) -> None:
    at = pick(open_page("pages/runs.py"), runs["failed"])
    assert [e.value for e in at.error] == ["RuntimeError: boom at block 7\nTraceback line"]
    assert "failed: RuntimeError: boom at block 7" in at.code[0].value
    assert [b.label for b in at.button] == ["Re-run", "Archive", "Save"]
    calls = len(workers)
    widget(at.button, "Re-run").click().run()
    assert not at.exception
    new = newest_pruned(db)
    assert new["status"] == "queued" and int(new["id"]) > max(runs.values())
    assert new["spec"] == own_runs(db).set_index("id").loc[runs["failed"], "spec"]
    assert len(workers) > calls
    assert at.success and f"Queued run {new['id']}" in at.success[0].value
    assert widget(at.selectbox, "Run").value == new["id"]  # the details follow the new run


def test_rerun_of_a_run_whose_model_is_gone_says_why(db: Path, workers: list[int],
                                                     store: Store, assets: dict[str, str],
                                                     tmp_path: Path) -> None:
    gone = make_run(store, assets, "failed", model=str(tmp_path / "deleted-model"),
                    error="ModelLoadError: no such folder")
    at = open_page("pages/runs.py")
    widget(at.button, "Re-run").click().run()
    assert not at.exception
    assert any(f"Run {gone} cannot be run again" in e.value and "does not exist" in e.value
               for e in at.error)
    assert own_runs(db)["id"].tolist() == [gone]


def test_cancel_a_queued_run(db: Path, workers: list[int], runs: dict[str, int]) -> None:
    at = pick(open_page("pages/runs.py"), runs["queued"])
    widget(at.button, "Cancel").click().run()
    assert status_of(db, runs["queued"]) == "cancelled"
    assert at.success and "cancelled" in at.success[0].value
    assert at.warning and "cancelled before it started" in at.warning[0].value
    assert [b.label for b in at.button] == ["Re-run", "Archive", "Save"]


def test_cancel_a_running_run_asks_the_worker(db: Path, workers: list[int],
                                              runs: dict[str, int]) -> None:
    at = open_page("pages/runs.py")
    widget(at.button, "Cancel").click().run()
    row = own_runs(db).set_index("id").loc[runs["running"]]
    assert row["status"] == "running" and Store(db).control.cancel_requested(runs["running"])
    assert at.dataframe[0].value.set_index("Run").loc[runs["running"], "Status"] == "cancelling"
    assert widget(at.button, "Cancel").disabled


def test_done_run_shows_results_log_and_settings(db: Path, workers: list[int],
                                                 runs: dict[str, int],
                                                 assets: dict[str, str]) -> None:
    at = pick(open_page("pages/runs.py"), runs["done"])
    assert not at.error
    results = at.table[0].value
    assert results.values.tolist() == [["Perplexity on sample.txt", "123.456  (128 tokens)"],
                                       ["Measured sparsity", "50.00%"],
                                       ["Pruning time", "0.25 s"]]
    log = at.code[0].value.splitlines()
    assert [line.split("  ", 1)[1] for line in log] == [
        "loading tiny-model", "pruning with magnitude to 50%", "done"]
    settings = dict(at.table[1].value.values.tolist())
    assert settings["Model"] == assets["model"] and settings["Method"] == "Magnitude"
    assert "Calibration text" not in settings  # magnitude uses no calibration data
    assert settings["Max windows"] == "4"
    assert any("recorded when the run starts" in c.value for c in at.caption)


def test_the_model_field_says_what_the_model_is(db: Path, workers: list[int],
                                                assets: dict[str, str], tmp_path: Path) -> None:
    at = open_page("pages/launch.py")
    captions = [c.value for c in at.caption]
    assert any("**smollm2-135m**: SmolLM2-135M-Instruct" in c and "de-quantised from 4-bit GGUF"
               in c and "no hub access" in c for c in captions), captions
    widget(at.text_input, "Model name or folder").set_value(assets["model"]).run()
    assert any(c == f"A local folder: `{assets['model']}`." for c in (c.value for c in at.caption))
    widget(at.text_input, "Model name or folder").set_value(str(tmp_path / "gone")).run()
    assert any("is not a folder on this machine" in c.value for c in at.caption)
    widget(at.text_input, "Model name or folder").set_value("org/some-model").run()
    assert any("hub id: `org/some-model`" in c.value for c in at.caption)


def test_zero_shot_offers_a_quick_default_with_the_cost_of_each_task(
        db: Path, workers: list[int]) -> None:
    at = open_page("pages/launch.py")
    tasks = widget(at.multiselect, "Zero-shot tasks")
    assert tasks.value == ["sb_everyday"]  # offline, a few seconds
    labels = list(tasks.options)  # as the form shows them
    assert "sb_everyday · 40 examples · ≈ 3 s" in labels
    assert "sb_wiki_next · 120 examples · ≈ 33 s" in labels
    assert "piqa · 1,838 examples · ≈ 4 min 36 s · from the hub" in labels


def test_done_run_lists_its_saved_model_and_size(db: Path, workers: list[int], store: Store,
                                                 assets: dict[str, str], tmp_path: Path) -> None:
    saved = tmp_path / "pruned"
    saved.mkdir()
    (saved / "model.safetensors").write_bytes(b"\0" * 3 * 2**20)
    (saved / "config.json").write_text("{}")
    spec = PruneSpec(model=assets["model"], method="magnitude", sparsity="0.5",
                     ppl_datasets=[assets["text"]], ppl_seqlen=32, save_dir=str(saved))
    run_id = create_run(store, spec, status="done")
    at = pick(open_page("pages/runs.py"), run_id)
    assert any(m.value == f"Saved model: `{saved}` (2 files, 3.0 MiB)" for m in at.markdown)
    settings = dict(at.table[0].value.values.tolist())  # no results: the settings come first
    assert settings["Saved to"] == str(saved) and settings["Selection rule"] == "reference"
    shutil.rmtree(saved)
    at = pick(open_page("pages/runs.py"), run_id)
    assert any("the folder is no longer there" in m.value for m in at.markdown)


def test_a_cancelled_run_says_cancelled_and_its_full_log_downloads(
        db: Path, workers: list[int], store: Store, assets: dict[str, str]) -> None:
    run_id = make_run(store, assets, "running", beat=True,
                      progress={"stage": "pruning", "done": 1, "total": 30})
    store.control.request_cancel(run_id)
    for line in ("loading tiny-model", "pruning with wanda to 50%", "cancelled"):
        store.append_log(run_id, line)
    store.move(run_id, "cancelled")  # the worker stopped it: the request stays recorded
    at = pick(open_page("pages/runs.py"), run_id)
    header = next(m.value for m in at.markdown if m.value.startswith("Status:"))
    assert header.startswith("Status: **cancelled**"), header
    assert widget(at.download_button, "Full log").proto.deferred_file_id  # written when clicked
    lines = run_views.full_log(store, run_id).splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "loading tiny-model", "pruning with wanda to 50%", "cancelled"]
    assert all(datetime.strptime(line.split("  ")[0], "%Y-%m-%d %H:%M:%S") for line in lines)
    assert len(run_views.log_tail(store, run_id, lines=2)) == 2


def live_payload(blocks: int) -> dict:
    """What a worker writes ``blocks`` of 30 blocks into pruning, 2 s a block, after 10 s of
    loading, the update just now (a plan of loading 10%, pruning 60%, perplexity 30%)."""
    clock = iter([0.0, 10.0, 10.0 + 2 * blocks]).__next__
    tracker = Tracker([Stage("loading model", 1), Stage("pruning", 6, "block"),
                       Stage("perplexity x", 3, "window")], clock=clock, wall=time.time)
    tracker.report("loading model", 0, 1)
    tracker.report("pruning", 0, 30)
    return {"stage": "pruning", "done": blocks, "total": 30,
            **tracker.report("pruning", blocks, 30)}


def test_a_running_run_shows_its_time_left_and_rate(db: Path, workers: list[int], store: Store,
                                                    assets: dict[str, str]) -> None:
    running = make_run(store, assets, "running", started_at=datetime.now(), beat=True,
                       progress=live_payload(6))
    starting = make_run(store, assets, "running", sparsity="0.6", started_at=datetime.now(),
                        beat=True, progress=live_payload(0))
    at = open_page("pages/runs.py")
    assert not at.exception
    bars = {p.text.split(" — ")[0]: p for p in at.get("progress")}
    bar = next(p for label, p in bars.items() if f"Run {running} " in label)
    # 24 blocks left at 0.5 blocks/s = 48 s, and perplexity's 30% at the pace so far (22 s
    # for 22%) = 30 s: about 78 s, less the moments since the update.
    assert re.search(r"pruning: block 6 of 30 · ≈ (1 min \d\d s|\d\d? s) left · 0\.5 blocks/s$",
                     bar.text), bar.text
    assert bar.value == 22  # loading's 10% + 6/30 of pruning's 60%
    assert next(p for label, p in bars.items() if f"Run {starting} " in label).text.endswith(
        "pruning: block 0 of 30 · estimating…")
    pick(at, running)
    detail = [p for p in at.get("progress") if p.text.startswith("pruning: block 6 of 30 · ≈")]
    assert detail, "the run's details show the same estimate"


def test_details_follow_the_running_run_until_one_is_picked(
        db: Path, workers: list[int], store: Store, assets: dict[str, str]) -> None:
    first = make_run(store, assets, "queued")
    second = make_run(store, assets, "queued", sparsity="0.6")
    finished = make_run(store, assets, "done", sparsity="0.7")
    at = open_page("pages/runs.py")
    assert widget(at.selectbox, "Run").value == second  # the newest queued, not the newest
    assert finished > second
    store.move(first, "running", started_at=datetime.now())
    store.control.beat(first, "test-worker")
    at.run()
    assert widget(at.selectbox, "Run").value == first  # it started: the details follow it
    pick(at, finished)
    store.move(second, "running", started_at=datetime.now())
    at.run()
    assert widget(at.selectbox, "Run").value == finished  # picked by hand: it stays


def test_progress_is_read_defensively() -> None:
    assert run_views.parse_progress(None) is None
    assert run_views.parse_progress(float("nan")) is None
    assert run_views.parse_progress("not json") is None
    assert run_views.parse_progress('{"stage": "pruning", "done": 3, "total": 30}').text == \
        "pruning: block 3 of 30"
    assert run_views.parse_progress({"stage": "loading model", "done": 0, "total": 1}).text == \
        "loading model"
    progress = run_views.parse_progress({"stage": "perplexity /x/y/eval.txt", "done": 2,
                                         "total": 8})
    assert progress.text == "perplexity on eval.txt: window 2 of 8" and progress.fraction == 0.25
    assert run_views.parse_progress({"stage": "pruning", "done": 1, "total": 0}).fraction == 0.0


def test_run_labels_name_activation_runs() -> None:
    from core.present import runs as run_views

    assert run_views.method_text("coreinfer", "activation", None) == \
        "CoreInfer (activation sparsity)"
    assert run_views.method_text("sparsity-levels", "activation", float("nan")) == \
        "Sparsity levels (activation sparsity)"
    assert run_views.method_text("wanda", "2:4", 0.5) == "Wanda 2:4"
    assert run_views.method_text("dense", "dense", 0) == "Dense"


def test_a_value_the_widget_would_refuse_is_reported_not_replaced(
        db: Path, workers: list[int], assets: dict[str, str]) -> None:
    """Typing 0 into Samples used to show the field red and queue the previous value (32)."""
    at = open_page("pages/launch.py")
    widget(at.selectbox, "Method").set_value("wanda").run()
    widget(at.text_input, "Model name or folder").set_value(assets["model"])
    widget(at.number_input, "Samples").set_value(0)
    widget(at.number_input, "Batch size").set_value(0)
    widget(at.button, "Queue run").click().run()
    message = at.error[0].value
    assert "Samples: 0 is not a whole number between 1 and 4096." in message
    assert "Batch size: 0 is not a whole number between 1 and 512." in message
    assert own_runs(db).empty and not workers


# -- names, notes, tags, archive and the run's link (issue 16) -----------------------------------
HTML_NAME = "<b>bold?</b> **not bold** [link](http://x)"


def stored_meta(db: Path, run_id: int) -> tuple:
    row = Store(db).frame("SELECT name, notes, tags FROM runs WHERE id = ?", [run_id]).iloc[0]
    tags = row["tags"]
    return row["name"], row["notes"], [] if tags is None or pd.isna(tags) is True else list(tags)


def shown_texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def test_name_notes_and_tags_from_the_launch_form_are_stored_and_listed(
        db: Path, workers: list[int], assets: dict[str, str]) -> None:
    at = open_page("pages/launch.py")
    widget(at.text_input, "Run name").set_value(HTML_NAME)
    widget(at.text_area, "Notes").set_value("# not a heading\n<i>x</i>")
    widget(at.text_input, "Tags (comma-separated)").set_value("paper, tiny-llama, paper")
    at = fill_launch(at, assets)
    assert not at.error, [e.value for e in at.error]
    run_id, baseline_id = own_runs(db)["id"].tolist()
    assert stored_meta(db, run_id) == (HTML_NAME, "# not a heading\n<i>x</i>",
                                       ["paper", "tiny-llama"])
    assert stored_meta(db, baseline_id)[0] is None  # the shared baseline is not named
    spec = json.loads(own_runs(db)["spec"].iloc[0])
    assert not {"name", "notes", "tags"} & set(spec)  # not part of the spec

    at.switch_page(str(Path(__file__).resolve().parent.parent / "pages/runs.py")).run()
    assert not at.exception
    row = at.dataframe[0].value.set_index("Run").loc[run_id]
    assert (row["Name"], row["Tags"]) == (HTML_NAME, "paper, tiny-llama")
    pick(at, run_id)
    assert f"Name: {HTML_NAME}" in shown_texts(at)  # st.text: never Markdown or HTML
    assert "# not a heading\n<i>x</i>" in shown_texts(at)
    assert not any(HTML_NAME in m.value or "not bold" in m.value for m in at.markdown)
    assert (f"Run {run_id} · {HTML_NAME} · Wanda 50% · calibration sample.txt 2×32, seed 0 · "
            "tiny-model") in widget(at.selectbox, "Run").options


def test_a_bad_tag_on_the_launch_form_queues_nothing(db: Path, workers: list[int],
                                                     assets: dict[str, str]) -> None:
    at = open_page("pages/launch.py")
    widget(at.text_input, "Tags (comma-separated)").set_value("ok, not<ok>")
    at = fill_launch(at, assets)
    problems = [line for line in at.error[0].value.splitlines() if line.startswith("- ")]
    assert len(problems) == 1 and problems[0].startswith("- Tags: 'not<ok>' holds '<' '>'")
    assert own_runs(db).empty


def test_a_resubmit_names_the_reused_run_only_where_it_has_no_name(
        db: Path, workers: list[int], assets: dict[str, str]) -> None:
    at = open_page("pages/launch.py")
    widget(at.text_input, "Run name").set_value("first")
    at = fill_launch(at, assets)
    run_id = int(newest_pruned(db)["id"])
    widget(at.text_input, "Run name").set_value("second")
    widget(at.text_input, "Tags (comma-separated)").set_value("later")
    at = fill_launch(at, assets)
    message = at.info[0].value
    assert "reused" in message and f"Run {run_id} got the tags given here" in message
    assert f"Run {run_id} keeps its own name" in message
    assert stored_meta(db, run_id) == ("first", None, ["later"])


def test_the_activation_form_names_its_run(db: Path, workers: list[int],
                                          assets: dict[str, str]) -> None:
    at = open_page("pages/launch.py")
    widget(at.radio, "Run kind").set_value("Activation sparsity").run()
    widget(at.text_input, "Model name or folder").set_value(assets["model"])
    widget(at.text_input, "Run name").set_value("act run")
    widget(at.text_input, "Tags (comma-separated)").set_value("coreinfer")
    widget(at.button, "Queue activation run").click().run()
    assert not at.error, [e.value for e in at.error]
    run_id = int(own_runs(db)["id"].iloc[-1])
    assert stored_meta(db, run_id) == ("act run", None, ["coreinfer"])


def test_editing_a_run_stores_its_name_notes_and_tags(db: Path, workers: list[int],
                                                      runs: dict[str, int]) -> None:
    at = pick(open_page("pages/runs.py"), runs["done"])
    assert not any(t.startswith(("Name:", "Tags:")) for t in shown_texts(at))  # no dashes
    widget(at.text_input, "Run name").set_value("**edited**")
    widget(at.text_area, "Notes").set_value("<script>x</script>")
    widget(at.text_input, "Tags (comma-separated)").set_value("a, b")
    widget(at.button, "Save").click().run()
    assert not at.exception and not at.error
    assert stored_meta(db, runs["done"]) == ("**edited**", "<script>x</script>", ["a", "b"])
    assert at.success and "Saved" in at.success[0].value
    assert "Name: **edited**" in shown_texts(at) and "<script>x</script>" in shown_texts(at)
    row = at.dataframe[0].value.set_index("Run").loc[runs["done"]]
    assert (row["Name"], row["Tags"]) == ("**edited**", "a, b")  # the live list follows
    widget(at.text_input, "Run name").set_value("x" * 121)
    widget(at.button, "Save").click().run()
    assert at.error and "Run name: 121 characters is too long" in at.error[0].value
    assert stored_meta(db, runs["done"])[0] == "**edited**"


def test_archive_hides_a_run_until_show_archived_and_restore_brings_it_back(
        db: Path, workers: list[int], runs: dict[str, int]) -> None:
    at = pick(open_page("pages/runs.py"), runs["done"])
    widget(at.button, "Archive").click().run()
    assert not at.exception and not at.error
    assert at.success and "archived" in at.success[0].value
    listed = at.dataframe[0].value["Run"].tolist()
    assert runs["done"] not in listed and runs["failed"] in listed
    assert any("1 archived run(s) hidden" in c.value for c in at.caption)
    assert widget(at.selectbox, "Run").value == runs["done"]  # its details stay open
    assert [b.label for b in at.button] == ["Re-run", "Restore", "Save"]
    assert "Archived" not in at.dataframe[0].proto.column_order
    widget(at.toggle, "Show archived").set_value(True).run()
    assert "Archived" in at.dataframe[0].proto.column_order
    shown = at.dataframe[0].value.set_index("Run")
    assert runs["done"] in shown.index and shown.loc[runs["done"], "Archived"] != ""
    assert shown.loc[runs["failed"], "Archived"] == ""
    widget(at.button, "Restore").click().run()
    assert Store(db).frame("SELECT archived_at FROM runs WHERE id = ?",
                           [runs["done"]])["archived_at"].isna().all()
    widget(at.toggle, "Show archived").set_value(False).run()
    assert runs["done"] in at.dataframe[0].value["Run"].tolist()


def test_the_list_filters_by_tag_and_by_text(db: Path, workers: list[int], store: Store,
                                             runs: dict[str, int]) -> None:
    from core.store import meta

    store.set_meta(runs["done"], meta.check("Baseline sweep", None, ["paper", "fig-3"]))
    store.set_meta(runs["failed"], meta.check(None, "retry with more samples", ["paper"]))
    at = open_page("pages/runs.py")
    assert widget(at.multiselect, "Tags").options == ["fig-3", "paper"]
    widget(at.multiselect, "Tags").set_value(["paper"]).run()
    assert sorted(at.dataframe[0].value["Run"]) == sorted([runs["done"], runs["failed"]])
    widget(at.multiselect, "Tags").set_value(["paper", "fig-3"]).run()
    assert at.dataframe[0].value["Run"].tolist() == [runs["done"]]  # every chosen tag
    widget(at.multiselect, "Tags").set_value([]).run()
    for text, expected in (("baseline", [runs["done"]]), ("MORE SAMPLES", [runs["failed"]]),
                           ("fig-3", [runs["done"]]), ("2:4", [runs["failed"]]),
                           ("magnitude", [runs["queued"], runs["done"]]),
                           ("tiny-model", sorted(runs.values(), reverse=True)),
                           ("nothing like it", [])):
        widget(at.text_input, "Search").set_value(text).run()
        assert not at.exception
        assert at.dataframe[0].value["Run"].tolist() == expected, text


def test_a_runs_link_opens_that_runs_details_and_a_pick_writes_the_link(
        db: Path, workers: list[int], runs: dict[str, int]) -> None:
    from tests.page_helpers import ROOT, TIMEOUT

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.query_params["run"] = str(runs["failed"])
    at.switch_page(str(ROOT / "pages/runs.py")).run()
    assert not at.exception
    assert widget(at.selectbox, "Run").value == runs["failed"]  # not the running default
    assert [e.value for e in at.error] == ["RuntimeError: boom at block 7\nTraceback line"]
    at.run()  # the refresh keeps it
    assert widget(at.selectbox, "Run").value == runs["failed"]
    pick(at, runs["done"])
    assert at.query_params["run"] == str(runs["done"])
    at.run()
    assert widget(at.selectbox, "Run").value == runs["done"]


@pytest.mark.parametrize("value", ["9999", "abc"])
def test_a_link_to_no_own_run_says_so(db: Path, workers: list[int], runs: dict[str, int],
                                      value: str) -> None:
    from tests.page_helpers import ROOT, TIMEOUT

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.query_params["run"] = value
    at.switch_page(str(ROOT / "pages/runs.py")).run()
    assert not at.exception
    assert at.warning and f"The link asks for run {value if value.isdigit() else repr(value)}" \
        in at.warning[0].value
    assert widget(at.selectbox, "Run").value == runs["running"]  # the usual default


def test_a_link_opens_an_archived_run_too(db: Path, workers: list[int], store: Store,
                                          runs: dict[str, int]) -> None:
    from tests.page_helpers import ROOT, TIMEOUT

    store.archive([runs["done"]])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.query_params["run"] = str(runs["done"])
    at.switch_page(str(ROOT / "pages/runs.py")).run()
    assert not at.exception and not at.warning
    assert runs["done"] not in at.dataframe[0].value["Run"].tolist()
    assert widget(at.selectbox, "Run").value == runs["done"]
    assert any(c.value.startswith("Archived ") for c in at.caption)
    assert "Restore" in [b.label for b in at.button]


def test_runs_list_shows_each_runs_key_results(db: Path, workers: list[int],
                                               runs: dict[str, int]) -> None:
    """The list's number columns: a perplexity per dataset (blank where diverged; a local text
    file by its name) and the mean accuracy over the tasks scored: the numbers of the
    Perplexity and Zero-shot pages."""
    store = Store(db)
    store.add_metrics(runs["done"], [
        {"kind": "perplexity", "dataset": "wiki-offline", "metric": "ppl", "value": 23.456},
        {"kind": "perplexity", "dataset": "ptb", "metric": "ppl", "value": None,
         "status": "diverged"},
        {"kind": "zero_shot", "dataset": "piqa", "metric": "acc", "value": 0.6},
        {"kind": "zero_shot", "dataset": "boolq", "metric": "acc", "value": 0.7},
        {"kind": "zero_shot", "dataset": "rte", "metric": "acc", "value": None,
         "status": "missing"}])
    at = open_page("pages/runs.py")
    by_id = at.dataframe[0].value.set_index("Run")
    done = by_id.loc[runs["done"]]
    # the fixture's own perplexity on a local file is named by the file
    assert done["PPL sample.txt"] == pytest.approx(123.456)
    assert done["PPL wiki-offline"] == pytest.approx(23.456) and pd.isna(done["PPL PTB"])
    zs_page = tables.zero_shot_table(tables.load_metrics(store, "zero_shot")).frame
    assert done["Zero-shot avg"] == pytest.approx(65.0) == pytest.approx(
        zs_page.set_index("Run").loc[runs["done"], "Accuracy"] * 100)
    failed = by_id.loc[runs["failed"]]
    assert failed[["PPL sample.txt", "Zero-shot avg", "Retention"]].isna().all()


def test_ria_with_its_parameters_from_the_form(db: Path, workers: list[int],
                                               assets: dict[str, str]) -> None:
    """A method's parameters come from its schema: RIA's appear when it is chosen and reach the
    stored spec."""
    at = open_page("pages/launch.py")
    widget(at.selectbox, "Method").set_value("ria").run()
    assert {"Norm exponent", "Per row", "Reallocation"} <= {
        w.label for w in [*at.number_input, *at.checkbox]}
    widget(at.checkbox, "Reallocation").check()
    widget(at.number_input, "Norm exponent").set_value(1.0)
    at = fill_launch(at, assets, method="ria", sparsity="2:4")
    assert not at.error, [e.value for e in at.error]
    spec = json.loads(newest_pruned(db)["spec"])
    assert spec["method"] == "ria" and spec["sparsity"] == "2:4"
    assert spec["method_params"] == {"norm_exponent": 1.0, "per_row": False,
                                     "reallocation": True}


def test_runs_page_under_ray_says_what_the_cluster_offers(
        db: Path, store: Store, assets: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Ray executor the page describes the dispatcher and lists the cluster's nodes
    and GPUs from the summary the dispatcher wrote, with a link to the Ray dashboard; the
    local GPU table is not shown."""
    from core.execution import cluster
    from core.execution.ray import RayExecutor

    monkeypatch.setenv("SPARSEBENCH_EXECUTOR", "ray")
    monkeypatch.setattr(RayExecutor, "ensure_workers", lambda self: [])
    make_run(store, assets, "done", "magnitude")
    at = open_page("pages/runs.py")
    assert "the cluster's nodes are listed once the dispatcher has started" in " ".join(
        c.value for c in at.caption)
    node = {"NodeID": "a" * 56, "NodeManagerHostname": "gpu-1", "NodeManagerAddress": "10.0.0.1",
            "Alive": True, "Resources": {"CPU": 32.0, "GPU": 8.0, "memory": 512 * 2**30}}
    cluster.write_summary(db, cluster.summarize([node], "head:6379", "10.0.0.1:8265"))
    at = open_page("pages/runs.py")
    captions = " ".join(c.value for c in at.caption)
    assert "A dispatcher on this machine hands queued runs to the Ray cluster" in captions
    assert "Runs execute on Ray (head:6379): 1 node, 32 CPUs, 8 GPUs" in captions
    assert "[Ray dashboard](http://10.0.0.1:8265)" in captions
    assert not any("GPU 0" in str(frame.value) for frame in at.dataframe)


def test_runs_page_shows_each_gpus_run_and_queue(db: Path, store: Store, workers: list[int],
                                                  assets: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with GPUs (two simulated) the page lists each GPU with the run it executes
    and the runs waiting for it."""
    from core.engine import devices

    monkeypatch.setenv(devices.SIMULATED_ENV, "2")
    running = make_run(store, assets, "running", "wanda", "0.5")
    store.update_run(running, worker=f"{os.uname().nodename}:{os.getpid()}:cuda:1")
    make_run(store, assets, "queued", "wanda", "0.6")
    at = open_page("pages/runs.py")
    table = next(f.value for f in at.dataframe if "Queued for any GPU" in f.value.columns)
    assert table["Device"].tolist() == ["GPU 0", "GPU 1", "CPU"]
    assert table["Running"].tolist() == ["idle", f"run {running}", "idle"]
    assert table["Queued for any GPU"].tolist() == [1, 1, 0]  # device auto, the default here
