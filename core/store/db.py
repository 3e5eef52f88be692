"""The DuckDB results store: runs, metrics, layer statistics and search trials.

Every connection is short-lived (opened for one read or one transaction, then closed) so that the
dashboard and a worker process can share the file; a lock held by another process is retried with
backoff.  Every statement takes its values as parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core import config
from core.runs.specs import spec_hash
from core.store.control import Control
from core.store.errors import StoreError
from core.store.meta import RunMeta, from_row, merged
from core.store.schema import (  # noqa: F401 - the store's schema, named here as before
    LAYER_SUMMARY_SELECT,
    METRIC_STATUSES,
    MIGRATIONS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    SETTING_COLUMNS,
    label_texts,
    setting_value,
    setting_values,
)

#: Statuses of a run that is still to finish (it holds its identity's ``active_hash``).
ACTIVE_STATUSES = ("queued", "running")
#: The status a run may move to, from each status (guards every change).
#: running -> queued: a run whose machine left a Ray cluster (or whose dispatcher died) is
#: queued again, a set number of times (``core.execution.ray``).
TRANSITIONS = {"queued": ("running", "failed", "cancelled"),
               "running": ("done", "failed", "cancelled", "queued")}

_METRIC_COLUMNS = (
    "kind", "dataset", "metric", "value", "stderr", "n_samples", "status", "raw", "note",
)
_LAYER_COLUMNS = ("block", "layer", "stat", "value", "raw", "note")
_TRIAL_COLUMNS = (
    "trial", "label", "params", "levels", "actual_sparsity", "metric", "value", "n_samples", "raw",
    "note",
)
# Heartbeats, progress and cancel requests live in the control store (``Store.control``).
_RUN_UPDATABLE = ("status", "started_at", "finished_at", "error", "environment", "worker")


def _explain(path: Path, exc: Exception) -> StoreError:
    text = str(exc)
    low = text.lower()
    if _disk_full(exc):
        msg = (f"The disk holding the results database {path} is full; nothing was written. "
               "Free some space and retry.")
    elif "lock" in low:
        msg = (f"The results database {path} is locked by another process that did not release it. "
               "Stop the other program (or wait) and reload.")
    elif "permission" in low or "read-only" in low or "read only" in low:
        msg = (f"The results database {path} cannot be written (permission denied / read-only). "
               "Results are shown read-only; set SPARSEBENCH_DB to a writable path to launch runs.")
    elif "not a valid duckdb" in low or "corrupt" in low or "serializ" in low or "magic" in low:
        msg = (f"The results database {path} is not a readable DuckDB file (corrupt or from "
               "another program). It was left untouched. Move it aside, or point SPARSEBENCH_DB "
               "elsewhere.")
    else:
        msg = f"The results database {path} could not be opened: {text}"
    return StoreError(msg)


def _disk_full(exc: Exception) -> bool:
    text = str(exc).lower()
    return "no space left" in text or "disk full" in text or "disk is full" in text


def _is_lock_error(exc: Exception) -> bool:
    low = str(exc).lower()
    return "lock" in low and ("conflict" in low or "could not set lock" in low or "resource" in low)


class Store:
    """Access to one results file.  Cheap to create; holds no open connection."""

    # One connection at a time inside a process: DuckDB refuses two differently configured
    # connections to the same file in one process, and Streamlit serves sessions from threads.
    _process_lock = threading.RLock()

    def __init__(self, path: Path | str | None = None, retries: int = 60, max_wait: float = 0.5):
        self.path = Path(path) if path is not None else config.db_path()
        self.retries = retries
        self.max_wait = max_wait
        self.writable = True
        #: Heartbeats, progress, log lines, cancel requests and results waiting for this file.
        self.control = Control(self.path)

    def patient(self, wait_s: float | None = None) -> Store:
        """This store, retrying a locked file for up to ``wait_s`` seconds
        (``SPARSEBENCH_RESULT_WAIT_S``, default an hour): what a run uses for its start and end
        writes, so that another program holding the file delays them but fails nothing."""
        if wait_s is None:
            wait_s = float(os.environ.get("SPARSEBENCH_RESULT_WAIT_S", "3600"))
        other = Store(self.path, retries=int(wait_s / self.max_wait) + 8, max_wait=self.max_wait)
        other.writable = self.writable
        return other

    # -- connections -------------------------------------------------------------------------
    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short connection; retried with backoff while another process holds the lock."""
        if write and not self.writable:
            raise StoreError(
                f"The results database {self.path} is read-only here; nothing was written.")
        with self._process_lock:
            con = self._open(read_only=not self.writable)
            try:
                yield con
            finally:
                con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        delay = 0.01
        last: Exception | None = None
        for _ in range(self.retries):
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise _explain(self.path, exc) from exc
                last = exc
                time.sleep(delay)
                delay = min(delay * 2, self.max_wait)
        raise _explain(self.path, last or RuntimeError("lock"))

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside BEGIN/COMMIT; rolled back on any error."""
        with self.connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if isinstance(exc, duckdb.Error) and _disk_full(exc):
                    raise StoreError(
                        f"The disk holding the results database {self.path} is full: this "
                        "write was rolled back, the file is unchanged. Free some space and "
                        "retry.") from exc
                raise

    def version(self) -> tuple[int, ...]:
        """A token that changes whenever the results file is written, by this program or another
        (size and modification time of the file and of its write-ahead log; reads leave both
        alone).  What the pages' caches are keyed on.  The control store is not part of it:
        progress and log lines are read fresh."""
        token: list[int] = []
        for path in (self.path, self.path.with_name(f"{self.path.name}.wal")):
            try:
                stat = path.stat()
            except OSError:
                token += [0, 0]
            else:
                token += [stat.st_mtime_ns, stat.st_size]
        return tuple(token)

    def results_version(self) -> tuple[Any, ...]:
        """A token that changes only when results change: rows added, a run done, the published
        figures imported (``bump_results``), not when a run is queued, claimed or fails.  What
        the result pages' caches are keyed on, so a queue that moves does not make every page
        recompute.  Costs a file stat, plus one small read after the file changed; while another
        program holds the file, the last value read stays (the pages keep what they show)."""
        token = self.version()
        known = _RESULTS_VERSIONS.get(self.path)
        if known is not None and known[0] == token:
            return known[1]
        try:
            with self.connect() as con:
                found = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                                         "('results_version', 'schema_version')").fetchall())
        except StoreError:
            if known is None:
                raise
            return known[1]
        value = (str(self.path), int(found.get("results_version", 0)),
                 int(found.get("schema_version", 0)))
        _RESULTS_VERSIONS[self.path] = (token, value)
        return value

    # -- schema ------------------------------------------------------------------------------
    def init(self) -> Store:
        """Create or migrate the schema; nothing else (the published figures are imported by
        ``core.store.published.sync``, an explicit start-up step).

        A file that cannot be written but holds the current schema is opened read-only.
        """
        if self.path.exists() and not _writable(self.path):
            self.writable = False
            if self.schema_version() != SCHEMA_VERSION:
                raise StoreError(f"The results database {self.path} is read-only and has an older "
                                 "schema; it cannot be upgraded here.")
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()
        return self

    def schema_version(self) -> int:
        with self.connect() as con:
            has_meta = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
            ).fetchone()[0]
            if not has_meta:
                return 0
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the missing migration steps up to ``target``; returns the new version."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(f"The results database {self.path} has schema {current}, newer "
                             f"than this program ({SCHEMA_VERSION}). Update SparseBench.")
        for version in range(current, target):
            with self.transaction() as con:
                for statement in MIGRATIONS[version]:
                    if callable(statement):
                        statement(con)
                    else:
                        con.execute(statement)
                con.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    [str(version + 1)],
                )
        return max(current, target)

    def get_meta(self, key: str) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    # -- writes ------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        kind: str,
        model: str,
        method: str,
        spec: Mapping[str, Any],
        sparsity: float | None = None,
        pattern: str = "unstructured",
        origin: str = "own",
        source: str | None = None,
        status: str = "queued",
        identity: Mapping[str, Any] | None = None,
        meta: RunMeta | None = None,
        labels: tuple[str, str] | None = None,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> int:
        """Insert a run and return its id (inside ``con``'s transaction when given).

        ``identity`` (default: the spec) is hashed to find identical runs later; ``meta``
        (checked by ``core.store.meta.check``) is the run's name, notes and tags, never part
        of the hash; ``labels`` its (variant, settings) texts (``label_texts``).
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; allowed: {RUN_STATUSES}")
        if origin not in ("own", "published"):
            raise ValueError(f"origin must be 'own' or 'published', not {origin!r}")
        digest = spec_hash(identity if identity is not None else spec)
        active = digest if origin == "own" and status in ACTIVE_STATUSES else None
        args = [origin, source, kind, model, method, sparsity, pattern,
                json.dumps(spec, sort_keys=True, default=str), digest, status, active,
                *setting_values(spec), *(meta or RunMeta()).row(), *(labels or (None, None))]
        columns = ("origin, source, kind, model, method, sparsity, pattern, spec, spec_hash, "
                   f"status, active_hash, {', '.join(SETTING_COLUMNS.values())}, "
                   "name, notes, tags, variant, settings")
        sql = (f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' for _ in args)}) "
               "RETURNING id")
        if con is not None:
            return _inserted(con, sql, args, status)
        with self.transaction() as own:
            return _inserted(own, sql, args, status)

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set some of a run's mutable columns (error, timestamps, environment, worker);
        the status changes only through :meth:`move`."""
        unknown = set(fields) - set(_RUN_UPDATABLE) | ({"status"} & set(fields))
        if unknown:
            raise ValueError(f"cannot update run columns {sorted(unknown)}"
                             + ("; change the status with move()" if "status" in fields else ""))
        values = _column_values(fields)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as con:
            con.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*values, run_id])

    # -- what people call a run (never results: ``results_version`` stays), and archiving --
    def set_meta(self, run_id: int, meta: RunMeta) -> None:
        """Set an own run's name, notes and tags to ``meta`` (checked by
        ``core.store.meta.check``; None / () clears a field).  A published run is refused."""
        with self.transaction() as con:
            own_runs(con, [run_id], "have its name, notes and tags changed")
            con.execute("UPDATE runs SET name = ?, notes = ?, tags = ? WHERE id = ?",
                        [*meta.row(), int(run_id)])

    def add_meta(self, run_id: int, meta: RunMeta, con: duckdb.DuckDBPyConnection
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Give an own run ``meta`` without overwriting (``core.store.meta.merged``: a name
        or notes only where it has none, tags added), in ``con``'s transaction.  Returns the
        fields changed and the given fields left as the run had them."""
        row = con.execute("SELECT name, notes, tags FROM runs WHERE id = ? AND origin = 'own'",
                          [int(run_id)]).fetchone()
        if row is None or not meta.given():
            return (), ()
        result, changed, kept = merged(from_row(*row), meta)
        if changed:
            con.execute("UPDATE runs SET name = ?, notes = ?, tags = ? WHERE id = ?",
                        [*result.row(), int(run_id)])
        return changed, kept

    def archive(self, run_ids: Iterable[int]) -> list[int]:
        """Archive own finished runs (hidden from the Runs list and the result pages, kept
        whole); returns those newly archived.  All or nothing: a published run, an active
        (queued or running) one or an unknown id refuses the lot with a ``ValueError`` saying
        why."""
        ids = [int(i) for i in run_ids]
        with self.transaction() as con:
            rows = own_runs(con, ids, "be archived")
            active = [i for i, status in rows if status in ACTIVE_STATUSES]
            if active:
                one = len(active) == 1
                raise ValueError(f"{_runs_text(active)} {'is' if one else 'are'} still queued or "
                                 "running and cannot be archived: cancel "
                                 f"{'it' if one else 'them'} first, then archive "
                                 f"{'it' if one else 'them'}.")
            done = [int(r[0]) for r in con.execute(
                "UPDATE runs SET archived_at = ? WHERE list_contains(?, id) AND archived_at IS "
                "NULL RETURNING id", [datetime.now(), ids]).fetchall()]
            if done:  # the result pages leave archived runs out
                bump_results(con)
            return done

    def restore(self, run_ids: Iterable[int]) -> list[int]:
        """Bring archived own runs back to the Runs list; returns those restored (a run that
        is not archived is left as it is).  Unknown or published ids refuse the lot."""
        ids = [int(i) for i in run_ids]
        with self.transaction() as con:
            own_runs(con, ids, "be restored")
            done = [int(r[0]) for r in con.execute(
                "UPDATE runs SET archived_at = NULL WHERE list_contains(?, id) AND archived_at "
                "IS NOT NULL RETURNING id", [ids]).fetchall()]
            if done:
                bump_results(con)
            return done

    def move(self, run_id: int, status: str, con: duckdb.DuckDBPyConnection | None = None,
             **fields: Any) -> bool:
        """Change a run's status only along ``TRANSITIONS`` (queued -> running -> done / failed
        / cancelled), with other columns; False when the run was not in a status that may
        move there (a cancelled or failed run never becomes done)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        sources = [old for old, new in TRANSITIONS.items() if status in new]
        values = _column_values(fields)
        sets = "".join(f", {k} = ?" for k in fields)
        active = "spec_hash" if status in ACTIVE_STATUSES else "NULL"
        sql = (f"UPDATE runs SET status = ?, active_hash = {active}{sets} WHERE id = ? AND "
               f"status IN ({', '.join('?' for _ in sources)}) RETURNING id")
        params = [status, *values, run_id, *sources]
        if con is not None:
            return _moved(con, sql, params, status)
        with self.transaction() as own:
            return _moved(own, sql, params, status)

    def add_metrics(self, run_id: int, rows: Iterable[Mapping[str, Any]],
                    con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Store metric rows: kind, dataset, metric, value and optionally stderr, n_samples..."""
        self.add_rows(metrics=[(run_id, row) for row in rows], con=con)

    def add_layer_stats(self, run_id: int, rows: Iterable[Mapping[str, Any]],
                        con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.add_rows(layer_stats=[(run_id, row) for row in rows], con=con)

    def add_search_trials(self, run_id: int, rows: Iterable[Mapping[str, Any]],
                          con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.add_rows(trials=[(run_id, row) for row in rows], con=con)

    def add_window_nlls(self, run_id: int, rows: Iterable[Mapping[str, Any]],
                        con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Store each dataset's per-window mean NLLs: rows of ``dataset`` and ``nlls``."""
        self.add_rows(windows=[(run_id, row) for row in rows], con=con)

    def add_rows(self, *, metrics: Iterable[tuple[int, Mapping[str, Any]]] = (),
                 layer_stats: Iterable[tuple[int, Mapping[str, Any]]] = (),
                 trials: Iterable[tuple[int, Mapping[str, Any]]] = (),
                 windows: Iterable[tuple[int, Mapping[str, Any]]] = (),
                 con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Rows of any runs, as ``(run_id, row)`` pairs, written in one transaction (``con``'s
        when given) with one statement per table."""
        batches = (("metrics", ("run_id", *_METRIC_COLUMNS), [_metric_values(i, r)
                                                             for i, r in metrics]),
                   ("layer_stats", ("run_id", *_LAYER_COLUMNS),
                    [[i, *(r.get(c) for c in _LAYER_COLUMNS)] for i, r in layer_stats]),
                   ("search_trials", ("run_id", *_TRIAL_COLUMNS),
                    [_trial_values(i, r) for i, r in trials]),
                   ("window_nlls", ("run_id", "dataset", "nlls"),
                    [[i, r["dataset"], [float(v) for v in r["nlls"]]] for i, r in windows]))
        if con is None:
            if not any(rows for _, _, rows in batches):
                return
            with self.transaction() as own:
                _insert_batches(own, batches)
            return
        _insert_batches(con, batches)

    def append_log(self, run_id: int, line: str) -> None:
        """One line of a run's log (kept in the control store, not in the results file)."""
        self.control.log(run_id, line)

    # -- reads -------------------------------------------------------------------------------
    def frame(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run a read query and return a DataFrame."""
        with self.connect() as con:
            return con.execute(sql, params or []).df()

    def runs(self) -> pd.DataFrame:
        return self.frame("SELECT * FROM runs ORDER BY id")


def own_runs(con: duckdb.DuckDBPyConnection, run_ids: list[int], action: str
             ) -> list[tuple[int, str]]:
    """(id, status) of each of ``run_ids``; a ``ValueError`` when one is unknown or published
    (published figures are never edited, archived or deleted), worded with ``action``."""
    found = {int(i): (str(o), str(s)) for i, o, s in con.execute(
        "SELECT id, origin, status FROM runs WHERE list_contains(?, id)",
        [[int(i) for i in run_ids]]).fetchall()}
    missing = [i for i in run_ids if i not in found]
    if missing:
        raise ValueError(f"There is no {_runs_text(missing).lower()}." if len(missing) == 1
                         else f"There are no {_runs_text(missing).lower()}.")
    published = [i for i in run_ids if found[i][0] != "own"]
    if published:
        what = ("is a published figure: it" if len(published) == 1
                else "are published figures: they")
        raise ValueError(f"{_runs_text(published)} {what} cannot {action} (only your own runs "
                         "can; published figures are never edited, archived or deleted).")
    return [(i, found[i][1]) for i in run_ids]


def _runs_text(ids: list[int]) -> str:
    """'Run 3' or 'Runs 3, 5 and 8'."""
    text = [str(i) for i in ids]
    return f"Run {text[0]}" if len(text) == 1 else f"Runs {', '.join(text[:-1])} and {text[-1]}"


def _insert_batches(con: duckdb.DuckDBPyConnection,
                    batches: Iterable[tuple[str, tuple[str, ...], list[list[Any]]]]) -> None:
    """Insert each table's rows; the layer summaries of runs that got layer rows follow."""
    written = False
    for table, columns, rows in batches:
        insert_rows(con, table, columns, rows)
        written = written or bool(rows)
        if table == "layer_stats" and rows:
            refresh_layer_summaries(con, sorted({int(row[0]) for row in rows}))
    if written:
        bump_results(con)


#: ``Store.results_version`` per results file: the file token it was read at and its value.
_RESULTS_VERSIONS: dict[Path, tuple[tuple[int, ...], tuple[Any, ...]]] = {}


def bump_results(con: duckdb.DuckDBPyConnection) -> None:
    """Count one more change of results (in ``con``'s transaction): ``Store.results_version``."""
    con.execute("""INSERT OR REPLACE INTO meta (key, value)
                   SELECT 'results_version', CAST(coalesce(max(CAST(value AS BIGINT)), 0) + 1
                                                  AS VARCHAR)
                   FROM meta WHERE key = 'results_version'""")


def _inserted(con: duckdb.DuckDBPyConnection, sql: str, args: list[Any], status: str) -> int:
    """Insert a run and return its id; a run stored done changes the results."""
    run_id = int(con.execute(sql, args).fetchone()[0])
    if status == "done":
        bump_results(con)
    return run_id


def _moved(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any], status: str) -> bool:
    """Run a status change; a run that is done now changes the results."""
    moved = con.execute(sql, params).fetchone() is not None
    if moved and status == "done":
        bump_results(con)
    return moved


def refresh_layer_summaries(con: duckdb.DuckDBPyConnection, run_ids: list[int]) -> None:
    """Rewrite the ``layer_summaries`` rows of ``run_ids`` from their layer rows."""
    con.execute("DELETE FROM layer_summaries WHERE list_contains(?, run_id)", [run_ids])
    con.execute(f"INSERT INTO layer_summaries {LAYER_SUMMARY_SELECT} "
                "WHERE list_contains(?, run_id) GROUP BY run_id", [run_ids])


def _column_values(fields: Mapping[str, Any]) -> list[Any]:
    """The values of run columns to set, the JSON ones (progress, environment) encoded."""
    return [json.dumps(v) if k in ("progress", "environment") and v is not None else v
            for k, v in fields.items()]


def _metric_values(run_id: int, row: Mapping[str, Any]) -> list[Any]:
    status = row.get("status", "ok")
    if status not in METRIC_STATUSES:
        raise ValueError(f"unknown metric status {status!r}")
    return [run_id, *(row.get(c, "ok" if c == "status" else None) for c in _METRIC_COLUMNS)]


def _trial_values(run_id: int, row: Mapping[str, Any]) -> list[Any]:
    values = [row.get(c) for c in _TRIAL_COLUMNS]
    for i, column in enumerate(_TRIAL_COLUMNS):
        if column in ("params", "levels") and values[i] is not None:
            values[i] = json.dumps(values[i])
    return [run_id, *values]


#: Rows per INSERT statement: one multi-row VALUES list is far quicker than ``executemany``.
_CHUNK = 500


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...],
                 rows: list[list[Any]]) -> None:
    """Insert ``rows`` (lists of values in ``columns`` order) into ``table`` inside ``con``'s
    transaction: up to ``_CHUNK`` rows as multi-row VALUES lists of parameters, more as one
    scan of a registered DataFrame."""
    if len(rows) > _CHUNK:  # many rows: one scan of a DataFrame is far quicker than binding
        frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
        con.register("_incoming_rows", frame)
        try:
            con.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
                        f"SELECT {', '.join(columns)} FROM _incoming_rows")
        finally:
            con.unregister("_incoming_rows")
        return
    row_marks = f"({', '.join('?' for _ in columns)})"
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                    + ", ".join(row_marks for _ in chunk), [v for row in chunk for v in row])


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
