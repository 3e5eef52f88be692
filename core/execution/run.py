"""Execute one stored run and record its outcome: running -> done, or failed with its error."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime
from typing import Any

import pandas as pd

from core.engine import environment
from core.runs import registry
from core.runs.results import ProgressFn, RunResult, Say, quiet
from core.store.db import Store
from core.store.record import RunNotActive, keep_and_store

log = logging.getLogger(__name__)


def run_and_store(store: Store, run_id: int, spec: Any, progress: ProgressFn = quiet,
                  say: Say = log.info) -> RunResult:
    """Execute a stored run (queued, or running: claimed by a worker) and record its outcome
    (failed runs keep their error).  A run cancelled or failed meanwhile is not executed, and
    its results are never stored (``RunNotActive``).  The result is held on disk until the
    results file takes it (``core.store.record.keep_and_store``)."""
    started = {"started_at": datetime.now(), "environment": environment.describe(spec.device)}
    if not store.move(run_id, "running", **started):
        status = store.frame("SELECT status, started_at FROM runs WHERE id = ?", [run_id])
        if status.empty or status.iloc[0, 0] != "running":
            raise RunNotActive(f"run {run_id} is {'gone' if status.empty else status.iloc[0, 0]}"
                               "; it was not executed")
        if not pd.isna(status.iloc[0, 1]):  # claimed: it started then, and the list says so
            del started["started_at"]
        store.update_run(run_id, **started)
    try:
        result = registry.execute(spec, progress, say)
    except Exception as exc:
        store.move(run_id, "failed", finished_at=datetime.now(),
                   error=f"{type(exc).__name__}: {exc}")
        store.control.forget(run_id)
        log.debug(traceback.format_exc())
        raise
    keep_and_store(store, run_id, result)
    return result
