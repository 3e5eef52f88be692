"""Sweeps: a grid over numeric parameters of a pruning run, one stored run per cell.

A grid maps parameter paths to value lists, e.g. ``{"method_params.alpha": [0.1, 1, 5],
"method_params.beta": [0.1, 1, 5]}`` (SparseLLM), ``{"owl.lambda": [0.04, 0.08, 0.12]}`` or
``{"method_params.dampening": [0.001, 0.01, 0.1]}``.  The sweep itself is stored as a run of kind
``sweep`` (status done, never executed) whose spec holds the base spec and the grid; every cell is
an ordinary prune run whose spec names the sweep.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core import jobs
from core.spec import PruneSpec
from core.store import Store

MAX_CELLS = 400


def _set(values: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if not rest:
        values[head] = value
        return
    if values.get(head) is None:
        values[head] = {}
    values[head] = dict(values[head])
    _set(values[head], rest, value)


def _get(values: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(values, dict):
            return None
        values = values.get(part)
    return values


def validate_grid(base: PruneSpec, grid: dict[str, list[Any]]) -> list[str]:
    """Problems with a grid: unknown paths, non-numeric values, too many cells, bad cells."""
    errors: list[str] = []
    if not grid:
        return ["Sweep: give at least one parameter and its values."]
    allowed_roots = {"method_params", "owl", "sparsity", "samples", "seqlen", "seed"}
    for path, values in grid.items():
        if path.split(".")[0] not in allowed_roots:
            errors.append(f"Sweep: {path!r} cannot be swept; use method_params.<name>, "
                          "owl.M, owl.lambda, sparsity, samples, seqlen or seed.")
        if not values:
            errors.append(f"Sweep: {path!r} has no values.")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            errors.append(f"Sweep: {path!r} values must be numbers.")
        if len(set(map(str, values))) != len(values):
            errors.append(f"Sweep: {path!r} repeats a value.")
    cells = math.prod(len(v) for v in grid.values()) if grid else 0
    if cells > MAX_CELLS:
        errors.append(f"Sweep: {cells} cells is more than {MAX_CELLS}; shrink the grid.")
    if errors:
        return errors
    for spec in expand(base, grid)[:1]:  # every cell shares validity but for the values
        errors += [f"Sweep cell: {p}" for p in spec.validate()]
    return errors


def expand(base: PruneSpec, grid: dict[str, list[Any]]) -> list[PruneSpec]:
    """One spec per grid cell (cartesian product, in the grid's order)."""
    paths = list(grid)
    specs = []
    for combo in itertools.product(*(grid[p] for p in paths)):
        values = copy.deepcopy(base.to_dict())
        for path, value in zip(paths, combo, strict=True):
            _set(values, path, str(value) if path == "sparsity" else value)
        specs.append(PruneSpec.from_dict(values))
    return specs


@dataclass(frozen=True)
class SweepSubmission:
    sweep_id: int
    run_ids: list[int]
    reused: int  # cells whose identical run was already stored


def submit_sweep(store: Store, base: PruneSpec, grid: dict[str, list[Any]],
                 fresh: bool = False) -> SweepSubmission:
    """Store the sweep and queue (or reuse) one run per cell."""
    problems = validate_grid(base, grid)
    cells = [] if problems else expand(base, grid)
    for spec in cells:
        problems += spec.validate()
    if problems:
        raise ValueError(" ".join(dict.fromkeys(problems)))
    target = base.target()
    sweep_id = store.create_run(kind="sweep", model=base.model, method=base.method,
                                sparsity=target.fraction, pattern=target.pattern,
                                spec={"base": base.to_dict(), "grid": grid}, status="done")
    run_ids, reused = [], 0
    for spec in cells:
        spec.sweep = sweep_id
        submission = jobs.submit(store, spec, fresh=fresh)
        run_ids.append(submission.run_id)
        reused += submission.reused
    return SweepSubmission(sweep_id, run_ids, reused)


def sweep_cells(store: Store, sweep_id: int, dataset: str | None = None) -> pd.DataFrame:
    """Long table: one row per cell with its parameter values, run, status and perplexity."""
    sweep = store.frame("SELECT spec FROM runs WHERE id = ? AND kind = 'sweep'", [sweep_id])
    if sweep.empty:
        raise ValueError(f"no sweep {sweep_id}")
    definition = json.loads(sweep.iloc[0, 0])
    base = PruneSpec.from_dict(definition["base"])
    grid = definition["grid"]
    dataset = dataset or (base.ppl_datasets[0] if base.ppl_datasets else None)
    runs = store.frame(
        """SELECT r.id, r.status, r.spec, m.value, m.status AS metric_status
           FROM runs r LEFT JOIN metrics m ON m.run_id = r.id AND m.kind = 'perplexity'
                AND m.dataset = ?
           WHERE r.origin = 'own' AND r.kind = 'prune'""", [dataset])
    by_identity = {}
    for row in runs.itertuples():
        spec = PruneSpec.from_dict(json.loads(row.spec))
        by_identity[json.dumps(spec.identity(), sort_keys=True)] = row  # latest run wins
    records = []
    for cell in expand(base, grid):
        row = by_identity.get(json.dumps(cell.identity(), sort_keys=True))
        record = {path: _get(cell.to_dict(), path) for path in grid}
        record.update({
            "run": int(row.id) if row is not None else None,
            "status": row.status if row is not None else "missing",
            "ppl": row.value if row is not None and row.metric_status == "ok" else math.nan,
            "diverged": row is not None and row.metric_status == "diverged",
        })
        records.append(record)
    return pd.DataFrame(records)


def sweep_matrix(cells: pd.DataFrame, rows: str, columns: str) -> tuple[pd.DataFrame, tuple]:
    """Seed 004 Table 4 layout: ``rows`` x ``columns`` perplexities, and the best cell's key."""
    matrix = cells.pivot_table(index=rows, columns=columns, values="ppl", aggfunc="min",
                               dropna=False)
    matrix = matrix.sort_index().sort_index(axis=1)
    finite = cells.dropna(subset=["ppl"])
    best = ()
    if not finite.empty:
        winner = finite.loc[finite["ppl"].idxmin()]
        best = (winner[rows], winner[columns])
    return matrix, best
