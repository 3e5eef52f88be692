"""Write a run's row and its results: one transaction per run, all or nothing.

A run's computed result is first held in the control store (``keep_and_store``): when another
program holds the results file, the result waits there, on disk, and the next ``flush_held``
(the worker's, the dispatcher's or a page's recovery) writes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from core.runs.registry import spec_from_dict
from core.runs.results import ChildRun, RunResult
from core.store.db import Store, StoreError, label_texts
from core.store.meta import RunMeta

log = logging.getLogger(__name__)


class RunNotActive(RuntimeError):
    """The run left 'running' (cancelled, failed by recovery) before its results arrived."""


def create_run(store: Store, spec: Any, status: str = "queued", con: Any = None,
               meta: RunMeta | None = None) -> int:
    """Insert a run row for ``spec`` (activation kinds: no weight sparsity, pattern
    'activation'; their measured kept fraction is a metric), named by ``meta``."""
    sparsity, pattern = spec.sparsity_columns()
    return store.create_run(kind=spec.kind, model=spec.model, method=spec.method,
                            sparsity=sparsity, pattern=pattern, spec=spec.to_dict(),
                            identity=spec.identity(), status=status, meta=meta,
                            labels=label_texts(spec), con=con)


def store_result(store: Store, run_id: int, result: RunResult) -> None:
    """Write all results (a search's trials and full-set runs too) and mark the run done,
    atomically."""
    with store.transaction() as con:
        store.add_metrics(run_id, result.metrics, con=con)
        store.add_layer_stats(run_id, result.layer_stats, con=con)
        store.add_search_trials(run_id, result.trials, con=con)
        store.add_window_nlls(run_id, result.windows, con=con)
        for child in result.children:
            child.spec.search = run_id
            child_id = create_run(store, child.spec, status="done", con=con)
            store.add_metrics(child_id, child.metrics, con=con)
            store.add_layer_stats(child_id, child.layer_stats, con=con)
            con.execute("UPDATE runs SET started_at = ?, finished_at = ? WHERE id = ?",
                        [datetime.now(), datetime.now(), child_id])
        if result.spec_updates:
            row = con.execute("SELECT spec FROM runs WHERE id = ?", [run_id]).fetchone()
            stored = {**json.loads(row[0]), **result.spec_updates}
            con.execute("UPDATE runs SET spec = ? WHERE id = ?",
                        [json.dumps(stored, sort_keys=True, default=str), run_id])
        if not store.move(run_id, "done", con=con, finished_at=datetime.now(), error=None):
            raise RunNotActive(f"run {run_id} is no longer running (cancelled or failed "
                               "meanwhile); its results were not stored")


def encode(result: RunResult) -> str:
    """A result as JSON (child runs by their spec), to wait on disk."""
    data = asdict(result)
    data["children"] = [{**asdict(child), "spec": child.spec.to_dict()}
                        for child in result.children]
    return json.dumps(data, default=float)


def decode(payload: str) -> RunResult:
    data = json.loads(payload)
    children = [ChildRun(spec_from_dict(c["spec"]), c["metrics"], c["layer_stats"])
                for c in data.pop("children")]
    return RunResult(**data, children=children)


def keep_and_store(store: Store, run_id: int, result: RunResult) -> None:
    """Hold the result on disk, then store it (waiting as long as ``store`` retries a locked
    file) and let it go.  A run no longer running drops it (``RunNotActive``); a results file
    still locked raises ``StoreError`` and the result stays held for ``flush_held``."""
    store.control.hold(run_id, encode(result))
    try:
        store_result(store, run_id, result)
    except RunNotActive:
        store.control.release(run_id)
        raise
    store.control.release(run_id)
    store.control.forget(run_id)


def flush_held(store: Store, run_ids: list[int] | None = None) -> list[int]:
    """Store the held results (all, or of ``run_ids``); returns the runs now done.  A run that
    is no longer running drops its held result; a locked file leaves them held."""
    stored = []
    for run_id, payload in store.control.held().items():
        if run_ids is not None and run_id not in run_ids:
            continue
        try:
            store_result(store, run_id, decode(payload))
        except RunNotActive as exc:
            log.info("%s", exc)
        except StoreError as exc:
            log.warning("run %s: its result waits for the results file: %s", run_id, exc)
            continue
        else:
            stored.append(run_id)
            store.append_log(run_id, "results stored (they had waited for the results file)")
        store.control.release(run_id)
        store.control.forget(run_id)
    return stored
