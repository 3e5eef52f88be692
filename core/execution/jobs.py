"""The run queue, kept in the store: submit (with result reuse and dense baselines), cancel,
re-run, and recovery of runs whose worker died."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.runs import sweep
from core.runs.kinds.prune import PruneSpec
from core.runs.registry import spec_from_dict
from core.store.db import Store, spec_hash
from core.store.record import create_run

#: A running run whose heartbeat is older than this is declared failed.
HEARTBEAT_TIMEOUT_S = 30.0
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Submission:
    run_id: int
    reused: bool  # an identical finished (or pending) run was found and no new run was queued
    baseline_id: int | None  # the dense baseline queued or found for this run


def find_identical(store: Store, spec: PruneSpec, statuses: tuple[str, ...]) -> int | None:
    """The newest own run with the same identity and one of ``statuses``."""
    placeholders = ", ".join("?" for _ in statuses)
    frame = store.frame(
        f"SELECT id FROM runs WHERE origin = 'own' AND spec_hash = ? AND status IN "
        f"({placeholders}) ORDER BY id DESC LIMIT 1",
        [spec_hash(spec.identity()), *statuses],
    )
    return int(frame.iloc[0, 0]) if len(frame) else None


def submit(store: Store, spec: PruneSpec, fresh: bool = False) -> Submission:
    """Queue ``spec`` unless an identical run is done or pending (and ``fresh`` is off).

    A pruned run also needs the dense baseline of the same model and evaluation (for change
    from dense and retention): it is queued first when no such run exists.
    """
    problems = spec.problems()
    if problems:
        raise ValueError(" ".join(problems))
    baseline_id = None
    # Activation runs and searches queue no dense baseline: no weights change, and they are
    # compared with CoreInfer (which a search runs itself), not with the dense model.
    dense = spec.baseline()
    if dense is not None:
        baseline_id = find_identical(store, dense, ("done", *ACTIVE))
        if baseline_id is None:
            baseline_id = create_run(store, dense)
    if not fresh:
        existing = find_identical(store, spec, ("done", *ACTIVE))
        if existing is not None:
            return Submission(existing, True, baseline_id)
    return Submission(create_run(store, spec), False, baseline_id)


def request_cancel(store: Store, run_id: int) -> str:
    """Cancel a queued run at once; ask the worker to stop a running one.  Returns the status."""
    with store.transaction() as con:
        row = con.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id}")
        status = row[0]
        if status == "queued":
            con.execute("UPDATE runs SET status = 'cancelled', finished_at = ?, "
                        "error = 'cancelled before it started' WHERE id = ?",
                        [datetime.now(), run_id])
            return "cancelled"
        if status == "running":
            con.execute("UPDATE runs SET cancel_requested = true WHERE id = ?", [run_id])
        return status


def rerun(store: Store, run_id: int) -> int:
    """Queue a fresh copy of a stored run's spec."""
    frame = store.frame("SELECT spec FROM runs WHERE id = ? AND origin = 'own'", [run_id])
    if frame.empty:
        raise ValueError(f"no own run {run_id} to re-run")
    spec = spec_from_dict(json.loads(frame.iloc[0, 0]))
    return submit(store, spec, fresh=True).run_id


def claim_next(store: Store, device: str, worker: str) -> int | None:
    """Atomically move the oldest queued run for ``device`` to running; returns its id."""
    now = datetime.now()
    with store.transaction() as con:
        row = con.execute(
            """UPDATE runs SET status = 'running', started_at = ?, heartbeat_at = ?, worker = ?
               WHERE id = (SELECT min(id) FROM runs WHERE status = 'queued' AND origin = 'own'
                           AND coalesce(json_extract_string(spec, '$.device'), 'cpu') = ?)
                 AND status = 'queued'
               RETURNING id""",
            [now, now, worker, device],
        ).fetchone()
    return int(row[0]) if row else None


def recover_stale(store: Store, timeout_s: float = HEARTBEAT_TIMEOUT_S,
                  device: str | None = None, reason: str | None = None) -> list[int]:
    """Mark running runs without a recent heartbeat as failed (all of ``device`` if reason given).

    With ``reason`` (used by a worker that holds the device lock, so no other worker can be
    running there) every running run of that device is failed at once.
    """
    cutoff = datetime.now() - timedelta(seconds=timeout_s)
    sql = "SELECT id FROM runs WHERE status = 'running' AND origin = 'own'"
    params: list[object] = []
    if device is not None:
        sql += " AND coalesce(json_extract_string(spec, '$.device'), 'cpu') = ?"
        params.append(device)
    if reason is None:
        sql += " AND (heartbeat_at IS NULL OR heartbeat_at < ?)"
        params.append(cutoff)
    ids = [int(i) for i in store.frame(sql, params)["id"]]
    message = reason or (f"the worker stopped sending heartbeats for over {timeout_s:.0f} s "
                         "(killed or crashed); results were not stored")
    for run_id in ids:
        with store.transaction() as con:
            con.execute("UPDATE runs SET status = 'failed', finished_at = ?, error = ? "
                        "WHERE id = ? AND status = 'running'", [datetime.now(), message, run_id])
    return ids


@dataclass(frozen=True)
class SweepSubmission:
    sweep_id: int
    run_ids: list[int]
    reused: int  # cells whose identical run was already stored


def submit_sweep(store: Store, base: PruneSpec, grid: dict[str, list[Any]],
                 fresh: bool = False) -> SweepSubmission:
    """Store the sweep and queue (or reuse) one run per cell."""
    problems = sweep.validate_grid(base, grid)
    cells = [] if problems else sweep.expand(base, grid)
    for spec in cells:
        problems += spec.problems()
    if problems:
        raise ValueError(" ".join(dict.fromkeys(problems)))
    target = base.target()
    sweep_id = store.create_run(kind="sweep", model=base.model, method=base.method,
                                sparsity=target.fraction, pattern=target.pattern,
                                spec={"base": base.to_dict(), "grid": grid}, status="done")
    run_ids, reused = [], 0
    for spec in cells:
        spec.sweep = sweep_id
        submission = submit(store, spec, fresh=fresh)
        run_ids.append(submission.run_id)
        reused += submission.reused
    return SweepSubmission(sweep_id, run_ids, reused)
