"""The run queue, kept in the store: submit (with result reuse and dense baselines), cancel,
re-run, and recovery of runs whose worker died."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.execution import cluster
from core.runs.registry import spec_from_dict
from core.store.db import Store, spec_hash
from core.store.meta import RunMeta, from_row
from core.store.queries import DEVICE_SQL
from core.store.record import create_run, flush_held

if TYPE_CHECKING:  # the prune kind imports torch: the Runs page, which lists runs, never needs it
    from core.runs.kinds.prune import PruneSpec

#: A running run whose heartbeat is older than this is declared failed.
HEARTBEAT_TIMEOUT_S = 30.0
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Submission:
    run_id: int
    reused: bool  # an identical finished (or pending) run was found and no new run was queued
    baseline_id: int | None  # the dense baseline queued or found for this run
    # A reused run: the given name / notes / tags it was given, and those it kept its own of.
    meta_set: tuple[str, ...] = ()
    meta_kept: tuple[str, ...] = ()


def find_identical(store: Store, spec: PruneSpec, statuses: tuple[str, ...],
                   con: Any = None) -> int | None:
    """The newest own run with the same identity and one of ``statuses`` (inside ``con``'s
    transaction when given)."""
    placeholders = ", ".join("?" for _ in statuses)
    sql = (f"SELECT id FROM runs WHERE origin = 'own' AND spec_hash = ? AND status IN "
           f"({placeholders}) ORDER BY id DESC LIMIT 1")
    params = [spec_hash(spec.identity()), *statuses]
    if con is not None:
        row = con.execute(sql, params).fetchone()
        return int(row[0]) if row else None
    frame = store.frame(sql, params)
    return int(frame.iloc[0, 0]) if len(frame) else None


def submit(store: Store, spec: PruneSpec, fresh: bool = False,
           meta: RunMeta | None = None, checked: bool = False) -> Submission:
    """Queue ``spec`` unless an identical run is done or pending (and ``fresh`` is off).

    ``meta`` (name, notes, tags; not part of the identity) goes to the new run; a reused run
    gets it only where it has none (``Store.add_meta``: a name is never overwritten), and the
    dense baseline, shared by many runs, never.

    A pruned run also needs the dense baseline of the same model and evaluation (for change
    from dense and retention): it is queued after the run when no such run exists, so the
    user's own result comes first (the baseline only serves the comparison).  The look-up and
    the inserts are one transaction, and the store holds at most one active run per identity
    (``runs.active_hash`` is unique), so two clicks at once get one run and the same answer;
    even ``fresh`` reuses an identical run that is still queued or running.
    """
    problems = [] if checked else spec.problems()  # ``checked``: the caller just checked it
    problems += cluster.executor_problems(store.path, spec)  # where it executes (Ray)
    if problems:
        raise ValueError(" ".join(problems))
    with store.transaction() as con:
        existing = find_identical(store, spec, ACTIVE if fresh else ("done", *ACTIVE), con=con)
        run_id = existing if existing is not None else create_run(store, spec, con=con,
                                                                    meta=meta)
        # Activation runs and searches queue no dense baseline: no weights change, and they
        # are compared with CoreInfer (which a search runs itself), not with the dense model.
        dense = spec.baseline()
        baseline_id = None
        if dense is not None:
            baseline_id = (find_identical(store, dense, ("done", *ACTIVE), con=con)
                           or create_run(store, dense, con=con))
        if existing is not None:
            changed, kept = store.add_meta(existing, meta or RunMeta(), con)
            return Submission(existing, True, baseline_id, changed, kept)
        return Submission(run_id, False, baseline_id)


def request_cancel(store: Store, run_id: int) -> str:
    """Cancel a queued run at once; ask the worker to stop a running one.  Returns the status."""
    with store.transaction() as con:
        row = con.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id}")
        status = row[0]
        if status == "queued":
            store.move(run_id, "cancelled", con=con, finished_at=datetime.now(),
                       error="cancelled before it started")
            return "cancelled"
    if status == "running":  # the worker polls the control store for it
        store.control.request_cancel(run_id)
    return status


def rerun(store: Store, run_id: int) -> int:
    """Queue a fresh copy of a stored run's spec, with its name, notes and tags."""
    frame = store.frame("SELECT spec, name, notes, tags FROM runs WHERE id = ? AND "
                        "origin = 'own'", [run_id])
    if frame.empty:
        raise ValueError(f"no own run {run_id} to re-run")
    spec = spec_from_dict(json.loads(frame.iloc[0, 0]))
    return submit(store, spec, fresh=True, meta=from_row(*frame.iloc[0, 1:])).run_id


def claim(store: Store, run_id: int, worker: str) -> bool:
    """Move one queued run to running for ``worker`` (False: someone else claimed it, or it
    was cancelled)."""
    if not store.move(run_id, "running", started_at=datetime.now(), worker=worker):
        return False
    store.control.beat(run_id, worker)
    return True


def claim_next(store: Store, devices: str | list[str], worker: str) -> int | None:
    """Atomically move the oldest queued run of one of ``devices`` to running; returns its
    id."""
    names = [devices] if isinstance(devices, str) else list(devices)
    marks = ", ".join("?" for _ in names)
    with store.transaction() as con:
        row = con.execute(
            f"""UPDATE runs SET status = 'running', started_at = ?, worker = ?
               WHERE id = (SELECT min(id) FROM runs WHERE status = 'queued' AND origin = 'own'
                           AND {DEVICE_SQL} IN ({marks}))
                 AND status = 'queued'
               RETURNING id""",
            [datetime.now(), worker, *names],
        ).fetchone()
    if row is None:
        return None
    store.control.beat(int(row[0]), worker)
    return int(row[0])


def next_queued(store: Store, devices: list[str], skip: tuple[int, ...] = ()
                ) -> tuple[int, str] | None:
    """(id, device) of the oldest queued run of one of ``devices`` not in ``skip``."""
    marks = ", ".join("?" for _ in devices)
    skipped = f" AND id NOT IN ({', '.join('?' for _ in skip)})" if skip else ""
    frame = store.frame(f"SELECT id, {DEVICE_SQL} AS device FROM runs WHERE status = 'queued' "
                        f"AND origin = 'own' AND {DEVICE_SQL} IN ({marks}){skipped} "
                        "ORDER BY id LIMIT 1", [*devices, *skip])
    return None if frame.empty else (int(frame.iloc[0, 0]), str(frame.iloc[0, 1]))


def recover_stale(store: Store, timeout_s: float = HEARTBEAT_TIMEOUT_S,
                  device: str | None = None, reason: str | None = None,
                  skip_prefix: str | None = None) -> list[int]:
    """Mark running runs without a recent heartbeat as failed; returns their ids.  A silent
    run whose result was computed and waits in the control store is stored instead (done).

    ``device`` (a worker's slot) narrows it to the runs of that device or held by a worker of
    that slot (an ``auto`` run).  With ``reason`` (used by a worker that holds the slot's lock)
    those whose holding process on this machine is gone are failed at once, without waiting for
    the heartbeat timeout; runs held elsewhere (a command-line run, another machine) are left to
    their heartbeat.  Runs whose worker name starts with ``skip_prefix`` are left alone (the Ray
    dispatcher recovers its own).
    """
    cutoff = datetime.now() - timedelta(seconds=timeout_s)
    sql = (f"SELECT id, started_at, worker, {DEVICE_SQL} AS device FROM runs "
           "WHERE status = 'running' AND origin = 'own'")
    frame = store.frame(sql)
    if device is not None:
        held_here = frame["worker"].fillna("").str.endswith(f":{device}")
        frame = frame[held_here | (frame["device"] == device)]
    if skip_prefix:
        frame = frame[~frame["worker"].fillna("").str.startswith(skip_prefix)]
    live = store.control.live([int(i) for i in frame["id"]])
    ids = [int(r.id) for r in frame.itertuples()
           if (reason is not None and holder_gone(r.worker))
           or _silent_since(live.get(int(r.id)), r.started_at, cutoff)]
    stored = flush_held(store, ids) if ids else []
    failed = []
    for run_id in (i for i in ids if i not in stored):
        silent = _silent_since(live.get(run_id), None, cutoff)
        message = (reason if reason is not None and not silent else
                   f"the worker stopped sending heartbeats for over {timeout_s:.0f} s (killed "
                   "or crashed); results were not stored")
        if store.move(run_id, "failed", finished_at=datetime.now(), error=message):
            store.append_log(run_id, f"failed: {message}")
            store.control.forget(run_id)
            failed.append(run_id)
    return failed


def holder_gone(worker: Any) -> bool:
    """Whether the run's holder, named ``[cli:]host:pid:device``, is a process of this machine
    that no longer runs (other names and other machines: not known here, False)."""
    parts = str(worker or "").removeprefix("cli:").split(":")
    if len(parts) < 3 or parts[0] != os.uname().nodename or not parts[1].isdigit():
        return False
    return not process_alive(int(parts[1]))


def process_alive(pid: int) -> bool:
    """A running process of this machine (not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _silent_since(live: dict[str, Any] | None, started: Any, cutoff: datetime) -> bool:
    """No heartbeat (nor a start) after ``cutoff``."""
    beat = live.get("heartbeat_at") if live else None
    last = beat or (None if started is None or pd.isna(started) else started)
    return last is None or last < cutoff


@dataclass(frozen=True)
class SweepSubmission:
    sweep_id: int
    run_ids: list[int]
    reused: int  # cells whose identical run was already stored


def submit_sweep(store: Store, base: PruneSpec, grid: dict[str, list[Any]],
                 fresh: bool = False, meta: RunMeta | None = None) -> SweepSubmission:
    """Store the sweep and queue (or reuse) one run per cell; ``meta`` names the sweep and
    its cells (a reused cell gets it only where it has none, as in ``submit``)."""
    from core.runs import sweep  # imports the prune kind, hence torch: only when sweeping

    problems = sweep.validate_grid(base, grid)
    cells = [] if problems else sweep.expand(base, grid)
    for spec in cells:
        problems += spec.problems()
    if problems:
        raise ValueError(" ".join(dict.fromkeys(problems)))
    target = base.target()
    sweep_id = store.create_run(kind="sweep", model=base.model, method=base.method,
                                sparsity=target.fraction, pattern=target.pattern,
                                spec={"base": base.to_dict(), "grid": grid}, status="done",
                                meta=meta)
    run_ids, reused = [], 0
    for spec in cells:
        spec.sweep = sweep_id
        submission = submit(store, spec, fresh=fresh, meta=meta)
        run_ids.append(submission.run_id)
        reused += submission.reused
    return SweepSubmission(sweep_id, run_ids, reused)


def running_where(store: Store) -> dict[int, str]:
    """Every own running run and the worker that holds it (what an executor's ``poll`` shows)."""
    frame = store.frame("SELECT id, coalesce(worker, '') AS worker FROM runs "
                        "WHERE status = 'running' AND origin = 'own' ORDER BY id")
    return {int(i): str(w) for i, w in zip(frame["id"], frame["worker"], strict=True)}
