"""The run-control store (SQLite, WAL): live rows, logs, held results, a full disk."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from core.store import control as control_module
from core.store.control import Control, ControlError, control_path
from core.store.db import Store, StoreError
from tests.store_procs import keep_writing


def test_live_rows_logs_and_held_results_round_trip(tmp_path: Path) -> None:
    control = Control(tmp_path / "results.duckdb")
    assert control.live([1]) == {} and control.logs(1) == [] and control.held() == {}
    assert not control.path.exists()  # reads never create the file
    control.beat(1, "host:12:cpu")
    control.set_progress(1, "pruning", 3, 30)
    control.request_cancel(1)
    control.beat(1)  # a heartbeat without a worker keeps the one noted
    live = control.live([1, 2])
    assert list(live) == [1] and live[1]["worker"] == "host:12:cpu"
    assert live[1]["progress"] == {"stage": "pruning", "done": 3, "total": 30, "percent": 10.0}
    assert live[1]["cancel_requested"] and control.cancel_requested(1)
    assert not control.cancel_requested(2)
    for line in ("one", "two", "three"):
        control.log(1, line)
    control.log(2, "other run")
    assert [line for _, _, line in control.logs(1)] == ["one", "two", "three"]
    assert [line for _, _, line in control.logs(1, last=2)] == ["two", "three"]
    first_id = control.logs(1)[0][0]
    assert [line for _, _, line in control.logs(1, after=first_id)] == ["two", "three"]
    control.hold(1, '{"metrics": []}')
    assert control.held() == {1: '{"metrics": []}'} and control.held(2) == {}
    control.release(1)
    control.forget(1)
    assert control.held() == {} and control.live([1]) == {}
    assert len(control.logs(1)) == 3  # a run's log outlives its live row
    mode = sqlite3.connect(control.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_each_results_file_has_its_own_control_file(tmp_path: Path) -> None:
    first, second = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    first.append_log(1, "from a")
    assert second.control.logs(1) == []
    assert control_path(tmp_path / "a.duckdb").name == "a.duckdb-control.sqlite"


def test_many_writers_at_once_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "results.duckdb").init()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=keep_writing, args=(str(store.path), 3.0, tag, 20))
             for tag in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    lines = {run_id: store.control.logs(run_id) for run_id in (1, 2, 3)}
    assert all(len(kept) > 10 for kept in lines.values())
    for kept in lines.values():  # every writer's lines, in order, none lost
        numbers = [int(line.split()[1]) for _, _, line in kept]
        assert numbers == list(range(len(numbers)))


def test_a_full_disk_is_worded_and_damages_nothing(tmp_path: Path, monkeypatch) -> None:
    control = Control(tmp_path / "results.duckdb")
    control.log(1, "before the disk filled")
    real_connect = sqlite3.connect

    def small_disk(*args, **kwargs):  # SQLite's own "database or disk is full"
        con = real_connect(*args, **kwargs)
        con.execute("PRAGMA max_page_count = 8")
        return con

    monkeypatch.setattr(control_module.sqlite3, "connect", small_disk)
    with pytest.raises(ControlError, match="is full; this write was rolled back") as caught:
        for i in range(10_000):
            control.log(1, f"line {i} " + "x" * 200)
    assert isinstance(caught.value, StoreError)  # the pages' one error type
    monkeypatch.setattr(control_module.sqlite3, "connect", real_connect)
    kept = [line for _, _, line in control.logs(1)]
    assert kept[0] == "before the disk filled" and len(kept) > 1
    assert sqlite3.connect(control.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
