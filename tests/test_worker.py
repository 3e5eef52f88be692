"""The background worker with a tiny model: queue, reuse, cancel, SIGKILL recovery, locks."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core import config
from core.engine import data
from core.execution import jobs, worker
from core.runs.kinds.prune import PruneSpec
from core.runs.results import RunResult
from core.store import queries, record
from core.store.db import Store
from tests.store_procs import hold_lock_on_signal, keep_writing
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder, tiny_tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("worker-assets")
    small = tiny_llama_folder(root / "small")
    # A slower model and a long text, so that a run lasts long enough to cancel or kill.
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    slow = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=512)).eval()
    slow.save_pretrained(root / "slow")
    tokenizer.save_pretrained(root / "slow")
    short = root / "short.txt"
    short.write_text(SAMPLE_TEXT)
    long = root / "long.txt"
    long.write_text(data.load_text("wiki-offline", "calibration")[:1_500_000])
    return {"small": str(small), "slow": str(root / "slow"), "short": str(short),
            "long": str(long)}


@pytest.fixture()
def store(tmp_path: Path, monkeypatch) -> Store:
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    return Store(tmp_path / "results.duckdb").init()


def spec(assets: dict[str, str], model: str = "small", text: str = "short", **kw) -> PruneSpec:
    values = dict(model=assets[model], method="wanda", sparsity="0.5", calibration=assets["short"],
                  samples=2, seqlen=32, ppl_datasets=[assets[text]], ppl_seqlen=32,
                  max_windows=4, batch_size=1)
    values.update(kw)
    return PruneSpec(**values)


def start_worker(store: Store, idle_exit: float = 2.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "core.execution.worker", "--db", str(store.path), "serve",
         "--idle-exit", str(idle_exit)], cwd=config.REPO_ROOT)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def own_runs(store: Store):
    runs = store.runs()
    return runs[runs["origin"] == "own"].set_index("id")


def status(store: Store, run_id: int) -> str:
    return store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0]


def stage(store: Store, run_id: int) -> str:
    """The stage the run's progress names now ('' before any)."""
    progress = store.control.live([run_id]).get(run_id, {}).get("progress")
    return progress["stage"] if progress else ""


def test_queue_runs_in_order_with_baseline_and_reuse(store: Store, assets) -> None:
    """About 20 s: a real worker process executes three runs and a baseline in order."""
    first = jobs.submit(store, spec(assets))
    assert first.baseline_id is not None and not first.reused
    second = jobs.submit(store, spec(assets, sparsity="2:4"))
    assert second.baseline_id == first.baseline_id  # one dense baseline serves both
    proc = start_worker(store)
    assert proc.wait(120) == 0
    runs = own_runs(store)
    assert list(runs["status"]) == ["done", "done", "done"]
    assert runs.loc[first.baseline_id, "method"] == "dense"
    assert runs["started_at"].is_monotonic_increasing  # oldest first
    ppl = queries.metric_rows(store, "perplexity")
    assert len(ppl[ppl["origin"] == "own"]) == 3
    again = jobs.submit(store, spec(assets))
    assert again.reused and again.run_id == first.run_id
    fresh = jobs.submit(store, spec(assets), fresh=True)
    assert not fresh.reused and fresh.run_id > second.run_id
    # the fresh copy is still queued: a re-run answers with it (one active run per identity)
    assert jobs.rerun(store, first.run_id) == fresh.run_id


def test_cancel_stops_a_running_run_and_stores_nothing(store: Store, assets) -> None:
    run = jobs.submit(store, spec(assets, "slow", "long", method="magnitude", max_windows=None,
                                  ppl_seqlen=256))
    jobs.request_cancel(store, run.baseline_id)  # queued: cancelled at once
    assert status(store, run.baseline_id) == "cancelled"
    proc = start_worker(store)
    try:
        wait_for(lambda: "perplexity" in stage(store, run.run_id), 60,
                 "the run to reach perplexity")
        asked = time.monotonic()
        assert jobs.request_cancel(store, run.run_id) == "running"
        wait_for(lambda: status(store, run.run_id) == "cancelled", 10, "cancellation")
        assert time.monotonic() - asked < 6
    finally:
        proc.terminate()
        proc.wait(10)
    assert store.frame("SELECT * FROM metrics WHERE run_id = ?", [run.run_id]).empty
    assert store.frame("SELECT * FROM layer_stats WHERE run_id = ?", [run.run_id]).empty
    assert "cancelled" in own_runs(store).loc[run.run_id, "error"]


def test_sigkilled_worker_fails_its_run_and_queue_goes_on(store: Store, assets) -> None:
    """Over 20 s: a worker is killed in the middle of a long evaluation and a new one must
    find its run failed and execute the next."""
    doomed = jobs.submit(store, spec(assets, "slow", "long", method="dense", max_windows=None,
                                     ppl_seqlen=256))
    later = jobs.submit(store, spec(assets))
    proc = start_worker(store, idle_exit=3)
    try:
        wait_for(lambda: "perplexity" in stage(store, doomed.run_id), 60,
                 "the doomed run to start evaluating")
        # The serving loop that holds the run (its pid is in the worker's name), not the
        # process a page started: no page is open and nobody calls a recovery here.
        holder = store.frame("SELECT worker FROM runs WHERE id = ?", [doomed.run_id]).iloc[0, 0]
        os.kill(int(holder.split(":")[-2]), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: status(store, doomed.run_id) == "failed", 30, "the run to be failed")
        assert time.monotonic() - killed < 30
        assert "killed by signal 9" in own_runs(store).loc[doomed.run_id, "error"]
        wait_for(lambda: status(store, later.run_id) == "done", 120, "the queue to continue")
        # the run first, then its dense baseline
        wait_for(lambda: status(store, later.baseline_id) == "done", 120, "its baseline")
        assert proc.wait(60) == 0  # the same worker went idle and left
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.frame("SELECT * FROM metrics WHERE run_id = ?", [doomed.run_id]).empty
    assert store.frame("SELECT * FROM layer_stats WHERE run_id = ?", [doomed.run_id]).empty


def test_silent_run_is_failed_by_the_heartbeat_check(store: Store, assets) -> None:
    run = jobs.submit(store, spec(assets, method="dense"))
    assert jobs.claim(store, run.run_id, "elsewhere:1:cpu")
    assert jobs.recover_stale(store, timeout_s=60.0) == []  # beating: left alone
    time.sleep(1.2)
    assert jobs.recover_stale(store, timeout_s=1.0) == [run.run_id]
    assert "heartbeat" in own_runs(store).loc[run.run_id, "error"]


def test_a_program_holding_the_results_file_for_60_s_fails_nothing(store: Store, assets) -> None:
    """Over 20 s (about 65 s) by design: the lock is held for longer than a store retries
    (60 s against 30 s), while a real run goes on and finishes behind it."""
    run = jobs.submit(store, spec(assets, "slow", "long", method="dense", max_windows=120,
                                  ppl_seqlen=256))
    ctx = mp.get_context("spawn")
    go, ready = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold_lock_on_signal, args=(str(store.path), 60.0, go, ready))
    holder.start()
    proc = start_worker(store)
    try:
        wait_for(lambda: "perplexity" in stage(store, run.run_id), 120, "the evaluation")
        go.set()
        assert ready.wait(30)
        held_at = time.monotonic()
        before = store.control.live([run.run_id])[run.run_id]["progress"]["done"]
        # The run goes on (progress and heartbeats go to the control store); its computed
        # result waits on disk for the results file.
        wait_for(lambda: store.control.held(run.run_id), 50, "the result to wait on disk")
        assert store.control.live([run.run_id])[run.run_id]["progress"]["done"] > before
        assert time.monotonic() - held_at < 60 and holder.is_alive()
        holder.join(90)
        wait_for(lambda: status(store, run.run_id) == "done", 120, "the result to be stored")
    finally:
        holder.join(90)
        proc.terminate()
        proc.wait(30)
    ppl = queries.metric_rows(store, "perplexity")
    assert len(ppl[ppl["run_id"] == run.run_id]) == 1
    assert not store.control.held()


def test_a_worker_whose_results_file_is_deleted_stops(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker left serving a results file whose folder was removed (a test's temporary
    folder, a deleted project) stops instead of retrying without pause."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    store = Store(folder / "results.duckdb").init()
    proc = start_worker(store, idle_exit=600.0)
    try:
        time.sleep(5)  # serving: idle, polling the queue
        assert proc.poll() is None
        shutil.rmtree(folder)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_result_left_on_disk_by_a_dead_run_is_stored(store: Store, assets) -> None:
    run = jobs.submit(store, spec(assets, method="dense"))
    assert jobs.claim(store, run.run_id, "gone:1:cpu")
    metric = {"kind": "perplexity", "dataset": "x", "metric": "ppl", "value": 12.5}
    store.control.hold(run.run_id, record.encode(RunResult(metrics=[metric])))
    time.sleep(1.2)
    assert jobs.recover_stale(store, timeout_s=1.0) == []  # nothing failed: it was stored
    assert status(store, run.run_id) == "done" and not store.control.held()
    assert queries.metric_rows(store, "perplexity")["value"].tolist() == [12.5]


def test_new_worker_fails_runs_left_by_a_dead_one(store: Store, assets) -> None:
    run = jobs.submit(store, spec(assets, method="dense"))
    # A worker of this machine that died right after claiming, and a live command-line run.
    jobs.claim_next(store, "cpu", f"{os.uname().nodename}:{2**22 + 7}:cpu")
    cli_run = jobs.submit(store, spec(assets, method="dense", max_windows=3))
    assert jobs.claim(store, cli_run.run_id, f"cli:{os.uname().nodename}:{os.getpid()}:cpu")
    proc = start_worker(store, idle_exit=1)
    assert proc.wait(60) == 0
    row = own_runs(store).loc[run.run_id]
    assert row["status"] == "failed" and "stopped" in row["error"]
    assert status(store, cli_run.run_id) == "running"  # its holder is alive: left alone


def test_only_one_worker_per_device(store: Store) -> None:
    with worker.device_lock(store.path, "cpu") as mine:
        assert mine and worker.worker_alive(store.path, "cpu")
        proc = subprocess.Popen([sys.executable, "-m", "core.execution.worker", "--db",
                                 str(store.path), "serve", "--idle-exit", "30"],
                                cwd=config.REPO_ROOT)
        assert proc.wait(30) == 0  # saw the lock and left at once
    assert not worker.worker_alive(store.path, "cpu")


def test_reads_never_fail_while_another_process_writes(store: Store) -> None:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=keep_writing, args=(str(store.path), 4.0, 1, 20))
    proc.start()
    reads = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        store.runs()
        store.control.logs(1, last=5)
        reads += 1
    proc.join(30)
    assert proc.exitcode == 0 and reads > 10
    assert len(store.control.logs(1)) > 10
