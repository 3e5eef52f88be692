"""The run lifecycle in the store: one atomic submit (at most one active run per identity) and
status changes guarded by the status they leave."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from core import config
from core.execution import jobs
from core.execution.run import run_and_store
from core.runs.kinds.prune import PruneSpec
from core.runs.results import RunResult
from core.store.db import Store, StoreError
from core.store.record import RunNotActive, create_run, store_result
from tests.store_procs import submit_many
from tests.tiny_assets import model_and_text


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return model_and_text(tmp_path_factory.mktemp("submit-assets"))


def spec_values(assets: dict[str, str], **change: object) -> dict[str, object]:
    return {"model": assets["model"], "method": "magnitude", "sparsity": "0.5",
            "calibration": assets["text"], "samples": 2, "seqlen": 32,
            "ppl_datasets": [assets["text"]], "ppl_seqlen": 32, "max_windows": 2,
            "batch_size": 1, **change}


def test_identical_submits_from_two_processes_give_one_run(tmp_path: Path,
                                                            assets: dict[str, str]) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=submit_many, args=(str(store.path), spec_values(assets), 10,
                                                   start, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    answers = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    runs = store.frame("SELECT id, method FROM runs WHERE origin = 'own' ORDER BY id")
    assert runs["method"].tolist() == ["magnitude", "dense"]  # the run and its baseline, once
    assert {i for ids in answers for i in ids} == {int(runs["id"].iloc[0])}


def test_a_second_identical_active_run_is_impossible(tmp_path: Path,
                                                     assets: dict[str, str]) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    spec = PruneSpec(**spec_values(assets))
    first = jobs.submit(store, spec)
    again = jobs.submit(store, spec, fresh=True)  # fresh reuses the pending one
    assert again.reused and again.run_id == first.run_id
    with pytest.raises(duckdb.ConstraintException):
        create_run(store, spec)  # the constraint itself, below submit
    jobs.request_cancel(store, first.run_id)
    fresh = jobs.submit(store, spec)  # cancelled: no longer active, a new run is queued
    assert not fresh.reused and fresh.run_id != first.run_id


def test_a_cancelled_or_failed_run_never_becomes_done(tmp_path: Path,
                                                      assets: dict[str, str]) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    spec = PruneSpec(**spec_values(assets))
    run_id = create_run(store, spec)
    assert store.move(run_id, "running")
    jobs.recover_stale(store, timeout_s=0)  # no heartbeat: failed by recovery
    with pytest.raises(RunNotActive):
        store_result(store, run_id, RunResult(metrics=[
            {"kind": "perplexity", "dataset": "x", "metric": "ppl", "value": 1.0}]))
    status = store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0]
    assert status == "failed" and store.frame("SELECT count(*) FROM metrics").iloc[0, 0] == 0
    assert not store.move(run_id, "done") and not store.move(run_id, "running")
    queued = create_run(store, PruneSpec(**spec_values(assets, seed=1)))
    jobs.request_cancel(store, queued)
    with pytest.raises(RunNotActive, match="cancelled; it was not executed"):
        run_and_store(store, queued, PruneSpec(**spec_values(assets, seed=1)))
    assert store.frame("SELECT status FROM runs WHERE id = ?", [queued]).iloc[0, 0] == (
        "cancelled")
    with pytest.raises(ValueError, match="move"):
        store.update_run(queued, status="done")


def test_a_claimed_run_keeps_the_time_it_started(tmp_path: Path, assets: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The Runs list's Started of a run never changes between refreshes: the worker's claim
    sets it, executing the run does not set it again."""
    from core.runs import registry

    store = Store(tmp_path / "r.duckdb").init()
    spec = PruneSpec(**spec_values(assets))
    run_id = create_run(store, spec)
    assert jobs.claim(store, run_id, "worker-1")
    claimed = store.frame("SELECT started_at FROM runs WHERE id = ?", [run_id]).iloc[0, 0]
    time.sleep(0.05)

    def fail(*_args: object) -> None:
        raise RuntimeError("stopped here")

    monkeypatch.setattr(registry, "execute", fail)
    with pytest.raises(RuntimeError, match="stopped here"):
        run_and_store(store, run_id, spec)
    row = store.frame("SELECT started_at, environment FROM runs WHERE id = ?", [run_id])
    assert row.iloc[0, 0] == claimed and row.iloc[0, 1]  # the environment is still noted


def test_migration_keys_the_newest_of_duplicate_active_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    store = Store(path)
    store.migrate(target=3)
    with store.transaction() as con:
        for _ in range(2):  # the race of before: two identical queued runs
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, "
                        "spec_hash, status) VALUES ('own', 'prune', 'm', 'wanda', 'unstructured', "
                        "'{}', 'h', 'queued')")
    store.init()
    rows = store.frame("SELECT id, active_hash FROM runs ORDER BY id")
    assert rows["active_hash"].isna().tolist() == [True, False]
    assert rows["active_hash"].iloc[1] == "h"


def test_a_cli_run_stays_running_while_pages_recover_and_ends_done(
        tmp_path: Path, assets: dict[str, str]) -> None:
    """Over 20 s under two test processes (about 16 s alone): the CLI in a process of its own
    executes a real run while this one recovers stale runs as a page would."""
    db = tmp_path / "cli.duckdb"
    store = Store(db).init()
    values = spec_values(assets)
    proc = subprocess.Popen(
        [sys.executable, "cli.py", "--db", str(db), "prune", "--model", values["model"],
         "--method", "magnitude", "--calibration", assets["text"], "--samples", "2",
         "--seqlen", "32", "--eval", assets["text"], "--ppl-seqlen", "32", "--max-windows", "2",
         "--batch-size", "1"],
        cwd=config.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        failed = jobs.recover_stale(store, timeout_s=5)  # what an open Runs page does
        assert not failed, "a healthy CLI run was failed by someone else's recovery"
        seen |= set(store.frame("SELECT status FROM runs WHERE origin = 'own'")["status"])
        time.sleep(1.0)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    final = store.frame("SELECT status FROM runs WHERE origin = 'own' ORDER BY id")["status"]
    assert final.tolist() == ["done", "done"] and "running" in seen and "failed" not in seen
    assert "ppl" in output


class _FullDisk:
    """A connection whose writes fail as DuckDB's do when the disk is full."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def execute(self, sql: str, *args: object) -> object:
        if sql.lstrip().upper().startswith("INSERT"):
            raise duckdb.IOException("Could not write file: No space left on device")
        return self.con.execute(sql, *args)

    def close(self) -> None:
        self.con.close()


def test_a_full_disk_gives_a_clear_message_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    opened = Store._open
    monkeypatch.setattr(Store, "_open", lambda self, read_only: _FullDisk(opened(self, read_only)))
    with pytest.raises(StoreError, match="disk holding the results database .* is full"):
        store.create_run(kind="prune", model="m", method="wanda", spec={})
    monkeypatch.undo()
    assert store.frame("SELECT count(*) FROM runs").iloc[0, 0] == 0


def test_logs_are_kept_per_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    one, other = config.log_dir(tmp_path / "a" / "r.duckdb"), config.log_dir(tmp_path / "r.duckdb")
    assert one != other and one.parent == other.parent == tmp_path / "cache" / "logs"
    assert config.log_dir(tmp_path / "a" / "r.duckdb") == one  # stable
