"""Execute one stored run and record its outcome: running -> done, or failed with its error."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime
from typing import Any

from core.engine import environment
from core.runs import registry
from core.runs.results import ProgressFn, RunResult, Say, quiet
from core.store.db import Store
from core.store.record import store_result

log = logging.getLogger(__name__)


def run_and_store(store: Store, run_id: int, spec: Any, progress: ProgressFn = quiet,
                  say: Say = log.info) -> RunResult:
    """Execute a stored run and record its outcome (failed runs keep their error)."""
    store.update_run(run_id, status="running", started_at=datetime.now(),
                     environment=environment.describe(spec.device))
    try:
        result = registry.execute(spec, progress, say)
    except Exception as exc:
        store.update_run(run_id, status="failed", finished_at=datetime.now(), progress=None,
                         error=f"{type(exc).__name__}: {exc}")
        log.debug(traceback.format_exc())
        raise
    store_result(store, run_id, result)
    return result
