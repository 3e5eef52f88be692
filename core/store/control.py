"""The run-control store: heartbeats, progress, log lines, cancel requests and the computed
results still waiting for the results file, in SQLite (WAL mode) beside the DuckDB results.

DuckDB lets one process write a file at a time, so every small write of a run in flight lands
here instead: SQLite in WAL mode takes many small writes from many processes, and readers never
wait for writers.  DuckDB keeps the runs and their results, written in one short transaction at
the start and at the end of a run; when another program holds the results file, the end waits
while the computed results wait here, on disk (``hold`` / ``held`` / ``release``).

One control file per results file (``results.duckdb`` -> ``results.duckdb-control.sqlite``).
Every connection is short-lived; reads of a control file that does not exist yet are empty.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from core.store.errors import StoreError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS live (
        run_id INTEGER PRIMARY KEY,
        worker TEXT,
        heartbeat_at REAL,
        progress TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        line TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS logs_by_run ON logs (run_id, id)",
    """CREATE TABLE IF NOT EXISTS held (
        run_id INTEGER PRIMARY KEY,
        payload TEXT NOT NULL,
        held_at REAL NOT NULL)""",
)
BUSY_TIMEOUT_S = 60.0


class ControlError(StoreError):
    """A problem with the run-control file, worded for the person reading it."""


def control_path(db: Path | str) -> Path:
    """The control file of the results file ``db``."""
    db = Path(db)
    return db.with_name(f"{db.name}-control.sqlite")


def _when(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value)


class Control:
    """Access to the control file of one results file.  Cheap to create."""

    def __init__(self, db: Path | str) -> None:
        self.path = control_path(db)
        self._ready = False

    # -- connections -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection | None]:
        """A short connection (None for a read of a file not created yet); a write is one
        ``BEGIN IMMEDIATE`` transaction."""
        if not write and not self.path.exists():
            yield None
            return
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._explain(exc) from exc
        try:
            if write and not self._ready:
                self._create(con)
            if write:
                con.execute("BEGIN IMMEDIATE")
            yield con
            if write:
                con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise self._explain(exc) from exc
        finally:
            con.close()

    def _create(self, con: sqlite3.Connection) -> None:
        con.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            con.execute(statement)
        self._ready = True

    def _explain(self, exc: Exception) -> ControlError:
        low = str(exc).lower()
        if "full" in low:
            return ControlError(f"The disk holding the run-control file {self.path} is full; "
                                "this write was rolled back. Free some space and retry.")
        return ControlError(f"The run-control file {self.path} could not be used: {exc}")

    def _rows(self, sql: str, params: list[Any]) -> list[tuple]:
        with self._connect(write=False) as con:
            if con is None:
                return []
            try:
                return con.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def _upsert(self, run_id: int, column: str, value: Any) -> None:
        with self._connect(write=True) as con:
            con.execute(f"INSERT INTO live (run_id, {column}) VALUES (?, ?) ON CONFLICT (run_id) "
                        f"DO UPDATE SET {column} = excluded.{column}", [run_id, value])

    # -- a run in flight ---------------------------------------------------------------------
    def beat(self, run_id: int, worker: str | None = None) -> None:
        """The run's heartbeat now (and the worker that holds it, when given)."""
        with self._connect(write=True) as con:
            con.execute("INSERT INTO live (run_id, worker, heartbeat_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (run_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
                        " worker = coalesce(excluded.worker, live.worker)",
                        [run_id, worker, time.time()])

    def set_progress(self, run_id: int, stage: str, done: int, total: int,
                     extra: dict[str, Any] | None = None) -> None:
        """The run's latest progress (``extra``: the tracker's step, fraction and timings,
        ``core.runs.progress.Tracker.report``)."""
        progress = {"stage": stage, "done": done, "total": total,
                    "percent": round(100 * done / max(total, 1), 1), **(extra or {})}
        self._upsert(run_id, "progress", json.dumps(progress))

    def request_cancel(self, run_id: int) -> None:
        self._upsert(run_id, "cancel_requested", 1)

    def cancel_requested(self, run_id: int) -> bool:
        rows = self._rows("SELECT cancel_requested FROM live WHERE run_id = ?", [run_id])
        return bool(rows and rows[0][0])

    def live(self, run_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Per run: worker, heartbeat_at (datetime), progress (dict) and cancel_requested."""
        if not run_ids:
            return {}
        marks = ", ".join("?" for _ in run_ids)
        rows = self._rows("SELECT run_id, worker, heartbeat_at, progress, cancel_requested "
                          f"FROM live WHERE run_id IN ({marks})", list(run_ids))
        return {int(r[0]): {"worker": r[1], "heartbeat_at": _when(r[2]),
                            "progress": json.loads(r[3]) if r[3] else None,
                            "cancel_requested": bool(r[4])} for r in rows}

    def forget(self, run_id: int) -> None:
        """The run has ended: drop its live row (its log stays)."""
        with self._connect(write=True) as con:
            con.execute("DELETE FROM live WHERE run_id = ?", [run_id])

    # -- logs --------------------------------------------------------------------------------
    def log(self, run_id: int, line: str) -> None:
        with self._connect(write=True) as con:
            con.execute("INSERT INTO logs (run_id, ts, line) VALUES (?, ?, ?)",
                        [run_id, time.time(), line])

    def logs(self, run_id: int, after: int = 0, last: int | None = None
             ) -> list[tuple[int, datetime, str]]:
        """(id, time, line) of the run's log lines after line id ``after``, oldest first
        (only the ``last`` ones when given)."""
        sql = "SELECT id, ts, line FROM logs WHERE run_id = ? AND id > ? ORDER BY id DESC"
        params: list[Any] = [run_id, after]
        if last is not None:
            sql += " LIMIT ?"
            params.append(last)
        return [(int(i), _when(ts), line) for i, ts, line in reversed(self._rows(sql, params))]

    # -- computed results waiting for the results file ---------------------------------------
    def hold(self, run_id: int, payload: str) -> None:
        """Keep a run's computed outcome on disk until the results file takes it."""
        with self._connect(write=True) as con:
            con.execute("INSERT OR REPLACE INTO held (run_id, payload, held_at) VALUES (?, ?, ?)",
                        [run_id, payload, time.time()])

    def held(self, run_id: int | None = None) -> dict[int, str]:
        """The outcomes waiting (of one run, or all), run id -> payload."""
        sql, params = "SELECT run_id, payload FROM held", []
        if run_id is not None:
            sql, params = sql + " WHERE run_id = ?", [run_id]
        return {int(i): p for i, p in self._rows(sql + " ORDER BY run_id", params)}

    def release(self, run_id: int) -> None:
        """The results file has the run's outcome (or the run ended otherwise)."""
        with self._connect(write=True) as con:
            con.execute("DELETE FROM held WHERE run_id = ?", [run_id])
