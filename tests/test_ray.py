"""The Ray executor on a local Ray instance (2 CPUs) with a tiny model: four runs queued through
``jobs.submit`` execute two at a time as Ray tasks; one is cancelled while running, the Ray worker
of another is killed with SIGKILL, the other two end done with their metrics stored.  The
dispatcher is driven in-process with ``Dispatcher.step``, the loop ``serve`` runs."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import config
from core.engine import data
from core.execution import executors, jobs
from core.execution.local import LocalExecutor
from core.execution.ray import CANCELLED, Dispatcher, RayExecutor, connect, failure_message
from core.runs.kinds.prune import PruneSpec
from core.store import queries
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny Llama, a short text and a long one (a run on it lasts long enough to stop)."""
    root = tmp_path_factory.mktemp("ray-assets")
    short = root / "short.txt"
    short.write_text(SAMPLE_TEXT)
    long = root / "long.txt"
    long.write_text(data.load_text("wiki-offline", "calibration")[:600_000])
    return {"model": str(tiny_llama_folder(root / "tiny")), "short": str(short),
            "long": str(long)}


def spec(assets: dict[str, str], seed: int, text: str) -> PruneSpec:
    """Wanda at 50 % on 2 x 32 calibration tokens; 2 evaluation windows of the short text, or
    every window of the long one."""
    return PruneSpec(model=assets["model"], method="wanda", sparsity="0.5",
                     calibration=assets["short"], samples=2, seqlen=32, seed=seed,
                     ppl_datasets=[assets[text]], ppl_seqlen=32,
                     max_windows=2 if text == "short" else None, batch_size=1)


def rows(store: Store, ids: list[int]) -> dict[int, dict]:
    """Status, worker, progress and error of the runs ``ids``."""
    frame = store.frame("SELECT id, status, worker, error FROM runs WHERE id IN "
                        f"({', '.join('?' for _ in ids)})", ids)
    live = store.control.live(ids)
    return {int(r["id"]): {**r, "progress": live.get(int(r["id"]), {}).get("progress")}
            for r in frame.to_dict("records")}


def step_until(dispatcher: Dispatcher, ready: Callable[[], bool], timeout: float, what: str,
               running: list[int]) -> None:
    """Step the dispatcher until ``ready()``; ``running`` collects how many runs ran each step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dispatcher.step()
        running.append(int(dispatcher.store.frame(
            "SELECT count(*) FROM runs WHERE status = 'running'").iloc[0, 0]))
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def worker_pid(row: dict) -> int | None:
    """The pid of the Ray worker a run reported it started on (``ray NODE pid N``)."""
    found = re.search(r"^ray \S+ pid (\d+)$", row["worker"] or "")
    return int(found.group(1)) if found else None


def test_four_runs_two_at_a_time_cancel_and_killed_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets: dict[str, str]) -> None:
    """Over 20 s under two test processes (about 16 s alone): a local Ray instance starts,
    runs four real runs two at a time, one cancelled and one whose worker is killed."""
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(config.REPO_ROOT)  # Ray workers import the project from the driver's folder
    store = Store(tmp_path / "results.duckdb").init()
    subs = [jobs.submit(store, spec(assets, seed, text))
            for seed, text in ((1, "long"), (2, "long"), (3, "short"), (4, "short"))]
    for baseline in {s.baseline_id for s in subs}:  # the four runs are the subject here
        assert jobs.request_cancel(store, baseline) == "cancelled"
    ids = [s.run_id for s in subs]
    cancelled, killed, first, second = ids
    executor = RayExecutor(store)
    started = time.monotonic()
    connect(num_cpus=2, num_gpus=0, object_store_memory=100 * 1024**2)
    running: list[int] = []
    try:
        dispatcher = Dispatcher(store)

        def both_long_runs_execute() -> bool:  # started on a Ray worker, reporting progress
            now = rows(store, ids)
            return all(worker_pid(now[i]) and now[i]["progress"] for i in (cancelled, killed))

        step_until(dispatcher, both_long_runs_execute, 120, "the long runs to start", running)
        now = rows(store, ids)
        assert [now[i]["status"] for i in ids] == ["running", "running", "queued", "queued"]
        pid = worker_pid(now[killed])
        assert pid != os.getpid() and pid != worker_pid(now[cancelled])
        assert executor.cancel(cancelled) == "running"
        os.kill(pid, signal.SIGKILL)
        step_until(dispatcher, lambda: not dispatcher.inflight and all(
            r["status"] not in jobs.ACTIVE for r in rows(store, ids).values()), 120,
            "every run to end", running)
    finally:
        ray.shutdown()
    elapsed = time.monotonic() - started
    final = rows(store, ids)
    assert {i: final[i]["status"] for i in ids} == {
        cancelled: "cancelled", killed: "failed", first: "done", second: "done"}, final
    assert max(running) == 2  # two at a time: the cluster's two CPUs
    assert final[cancelled]["error"] == CANCELLED
    error = final[killed]["error"]
    assert "Ray worker" in error and "died" in error and "crash" in error and str(pid) in error
    ppl = queries.metric_rows(store, "perplexity")
    assert sorted(ppl["run_id"]) == [first, second] and ppl["value"].notna().all()
    for run_id in (cancelled, killed):  # no partial results
        for table in ("metrics", "layer_stats"):
            assert store.frame(f"SELECT * FROM {table} WHERE run_id = ?", [run_id]).empty
    logs = [line for _, _, line in store.control.logs(first)]
    assert any(line.startswith("started on ") for line in logs)  # sent back by the task
    assert any("pruning with wanda" in line for line in logs) and logs[-1] == "done"
    print(f"four runs on Ray in {elapsed:.1f} s")


def test_executor_for_reads_the_configuration(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    monkeypatch.delenv("SPARSEBENCH_EXECUTOR", raising=False)
    assert isinstance(executors.executor_for(store), LocalExecutor)
    monkeypatch.setenv("SPARSEBENCH_EXECUTOR", "ray")
    monkeypatch.setenv("SPARSEBENCH_RAY_ADDRESS", "head:6379")
    chosen = executors.executor_for(store)
    assert isinstance(chosen, RayExecutor) and chosen.address == "head:6379"
    assert isinstance(chosen, executors.Executor)
    assert chosen.poll()["running"] == {} and not chosen.poll()["dispatcher"]
    monkeypatch.setenv("SPARSEBENCH_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="allowed: local, ray"):
        executors.executor_for(store)


def test_failures_are_worded_by_what_happened() -> None:
    crash = failure_message(ray.exceptions.WorkerCrashedError(), "node (1.2.3.4) pid 7")
    assert "Ray worker" in crash and "pid 7" in crash and "not stored" in crash
    refused = ray.exceptions.RayTaskError("execute_run", "tb", ValueError("Invalid run spec: x"))
    assert failure_message(refused) == "ValueError: Invalid run spec: x"
