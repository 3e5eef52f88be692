"""Sweeps: a grid over numeric parameters of a pruning run, one stored run per cell.

A grid maps parameter paths to value lists, e.g. ``{"method_params.alpha": [0.1, 1, 5],
"method_params.beta": [0.1, 1, 5]}`` (SparseLLM), ``{"owl.lambda": [0.04, 0.08, 0.12]}`` or
``{"method_params.dampening": [0.001, 0.01, 0.1]}``.  The sweep itself is stored as a run of kind
``sweep`` (status done, never executed; ``core.execution.jobs.submit_sweep``) whose spec holds
the base spec and the grid; every cell is an ordinary prune run whose spec names the sweep.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from pydantic import ValidationError

from core.runs.kinds.prune import PruneSpec
from core.runs.specs import check, messages

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


def get_path(values: dict[str, Any], path: str) -> Any:
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
    cells = expand_values(base, grid)
    errors += [f"Sweep cell: {p}" for p in check(PruneSpec, cells[0])[1]]
    for values in cells[1:]:  # the rest differ only in the swept values: their field checks
        try:
            PruneSpec.model_validate(values)
        except ValidationError as exc:
            errors += [f"Sweep cell: {p}" for p in messages(PruneSpec, exc)]
    return list(dict.fromkeys(errors))


def expand_values(base: PruneSpec, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The spec values of every grid cell (cartesian product, in the grid's order)."""
    paths = list(grid)
    cells = []
    for combo in itertools.product(*(grid[p] for p in paths)):
        values = copy.deepcopy(base.to_dict())
        for path, value in zip(paths, combo, strict=True):
            _set(values, path, str(value) if path == "sparsity" else value)
        cells.append(values)
    return cells


def expand(base: PruneSpec, grid: dict[str, list[Any]]) -> list[PruneSpec]:
    """One spec per grid cell (ValueError for a cell that is not a valid spec)."""
    return [PruneSpec.from_dict(values) for values in expand_values(base, grid)]
