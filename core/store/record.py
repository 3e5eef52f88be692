"""Write a run's row and its results: one transaction per run, all or nothing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core.runs.results import RunResult
from core.store.db import Store


class RunNotActive(RuntimeError):
    """The run left 'running' (cancelled, failed by recovery) before its results arrived."""


def create_run(store: Store, spec: Any, status: str = "queued", con: Any = None) -> int:
    """Insert a run row for ``spec`` (activation kinds: no weight sparsity, pattern
    'activation'; their measured kept fraction is a metric)."""
    sparsity, pattern = spec.sparsity_columns()
    return store.create_run(kind=spec.kind, model=spec.model, method=spec.method,
                            sparsity=sparsity, pattern=pattern, spec=spec.to_dict(),
                            identity=spec.identity(), status=status, con=con)


def store_result(store: Store, run_id: int, result: RunResult) -> None:
    """Write all results (a search's trials and full-set runs too) and mark the run done,
    atomically."""
    with store.transaction() as con:
        store.add_metrics(run_id, result.metrics, con=con)
        store.add_layer_stats(run_id, result.layer_stats, con=con)
        store.add_search_trials(run_id, result.trials, con=con)
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
        if not store.move(run_id, "done", con=con, finished_at=datetime.now(), error=None,
                          progress=None):
            raise RunNotActive(f"run {run_id} is no longer running (cancelled or failed "
                               "meanwhile); its results were not stored")
