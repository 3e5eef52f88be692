"""The report's key findings: each method at one sparsity against dense and against a
reference method, in words, from the same rows and baselines as the report's tables (no
Streamlit here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import findings
from core.present import tables


def _ppl_value(rec: Mapping[str, Any]) -> float | None:
    """The perplexity of a perplexity-table row: a number, NaN when diverged or collapsed (see
    :func:`_add_ppl`), None when none."""
    if rec["_status"] in ("diverged", "collapsed"):
        return math.nan
    value = rec["PPL"]
    return float(value) if findings.finite(value) else None


def level_results(ppl: pd.DataFrame, zs: pd.DataFrame, model: str, level: str,
                  metric: str = "acc", evaluation: str | None = None,
                  ppl_frame: pd.DataFrame | None = None
                  ) -> tuple[list[findings.Result], dict[str, findings.Result], str | None]:
    """The latest run of each method at one sparsity label as :class:`findings.Result` objects,
    each one's dense baseline (the one the tables compare it with) and the reference label.

    ``ppl_frame``: ``tables.perplexity_table(ppl).frame`` when the caller has it already."""
    methods: dict[str, tuple[str, Any, Any]] = {}  # method -> (label, sparsity, pattern)
    at_level = [f[f["sparsity_label"] == level] if not f.empty else f for f in (ppl, zs)]
    for frame in at_level:
        if frame.empty:
            continue
        pruned = frame[~frame["dense"].astype(bool)]
        firsts = pruned.drop_duplicates("method")[["method", "sparsity", "pattern"]]
        for rec in firsts.to_dict("records"):
            methods.setdefault(rec["method"], (
                tables.row_label(rec["method"], rec["sparsity"], rec["pattern"]),
                rec["sparsity"], rec["pattern"]))
    if not methods:
        return [], {}, None
    if ppl_frame is None:
        ppl_frame = tables.perplexity_table(ppl).frame if not ppl.empty else pd.DataFrame()
    long = (tables.per_task_long(zs, model, level, metric, evaluation=evaluation)
            if not zs.empty else pd.DataFrame())
    results, dense = [], {}
    latest_ppl = _latest_ppl_runs(at_level[0])
    runs, settings = _method_runs(at_level)
    for method in sorted(methods, key=tables._method_rank):
        label = methods[method][0]
        (ppl_values, collapsed, nlls), (dense_ppl, dense_collapsed, dense_nlls) = _method_ppl(
            latest_ppl.get(method, []), ppl_frame)
        (tasks, task_se), (dense_tasks, dense_se) = _method_tasks(long, method)
        run = runs.get(method)
        if len(settings.get(method, ())) > 1 and run is not None:
            label += f" (run {run})"  # several settings at this sparsity: name the one used
        results.append(findings.Result(label, ppl_values, tasks, run, collapsed, task_se, nlls))
        if dense_ppl or dense_tasks:
            dense[label] = findings.Result("Dense", dense_ppl, dense_tasks,
                                           collapsed=dense_collapsed, task_se=dense_se,
                                           ppl_nlls=dense_nlls)
    labels = [r.label for r in results]
    reference = next((r.label for r in results if r.label.startswith("Magnitude ")), labels[0])
    return results, dense, reference


def _method_runs(frames: Sequence[pd.DataFrame]) -> tuple[dict[str, int], dict[str, set]]:
    """Per method of ``frames`` (one level's): its latest run in the first frame that has it,
    and the distinct settings of its runs in all of them."""
    runs: dict[str, int] = {}
    settings: dict[str, set] = {}
    for frame in frames:
        if frame.empty:
            continue
        for method, run in frame.groupby("method", sort=False)["run_id"].max().items():
            runs.setdefault(method, int(run))
        for method, setting in zip(frame["method"].tolist(), frame["settings"].tolist(),
                                   strict=True):
            settings.setdefault(method, set()).add(setting)
    return runs, settings


#: Perplexities by dataset, the datasets among them that collapsed, and the per-window NLLs
#: by dataset (findings.Result's ``ppl``, ``collapsed`` and ``ppl_nlls``).
_Ppl = tuple[dict[str, float], frozenset[str], dict[str, list[float]]]
_PplParts = tuple[dict[str, float], set[str], dict[str, list[float]]]


def _add_ppl(into: _PplParts, dataset: str, rec: Mapping[str, Any]) -> None:
    """Put a perplexity-table row's perplexity into ``into``'s values (NaN when diverged or
    collapsed, nothing when it has none), a collapsed one's dataset into its collapsed set and
    its per-window NLLs (where stored) into its windows."""
    value = _ppl_value(rec)
    if value is not None:
        into[0][dataset] = value
        if rec["_status"] == "collapsed":
            into[1].add(dataset)
        if isinstance(rec.get("_nlls"), list | tuple | np.ndarray):
            into[2][dataset] = list(rec["_nlls"])


def _latest_ppl_runs(ppl: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    """Per method of one level's perplexity rows, its latest pruned run per dataset (datasets
    in the order the rows first name them)."""
    if ppl.empty:
        return {}
    pruned = ppl[~ppl["dense"].astype(bool)]
    latest: dict[str, list[tuple[str, int]]] = {}
    for (method, dataset), run in pruned.groupby(["method", "dataset"], sort=False)[
            "run_id"].max().items():
        latest.setdefault(method, []).append((dataset, int(run)))
    return latest


def _method_ppl(latest: Sequence[tuple[str, int]], frame: pd.DataFrame) -> tuple[_Ppl, _Ppl]:
    """A method's perplexities from its ``latest`` (dataset, run) pairs of one level, and its
    dense baseline's, from the perplexity table's ``frame``."""
    mine_parts: _PplParts = ({}, set(), {})
    dense_parts: _PplParts = ({}, set(), {})
    if latest and not frame.empty:
        rows = _table_rows(frame)
        for dataset, run in latest:
            rec = rows.get((run, dataset))
            if rec is None:
                continue
            _add_ppl(mine_parts, dataset, rec)
            base = rec["_baseline_run"]
            if base is not None and not tables._isna(base) and (int(base), dataset) in rows:
                _add_ppl(dense_parts, dataset, rows[(int(base), dataset)])
    return _frozen(mine_parts), _frozen(dense_parts)


def _frozen(parts: _PplParts) -> _Ppl:
    return parts[0], frozenset(parts[1]), parts[2]


@tables.frame_cache()
def _table_rows(frame: pd.DataFrame) -> dict[tuple[int, Any], dict[str, Any]]:
    """The perplexity table's rows by (run, dataset column), the last row of each (read only)."""
    return {(int(run), dataset): rec for run, dataset, rec in
            zip(frame["Run"], frame["Dataset"], frame.to_dict("records"), strict=True)}


#: Accuracies by task and their standard errors (findings.Result's ``tasks`` and ``task_se``).
_Tasks = tuple[dict[str, float], dict[str, float]]


def _method_tasks(long: pd.DataFrame, method: str) -> tuple[_Tasks, _Tasks]:
    """The accuracies (and standard errors) of ``method``'s latest run at a level by task, and
    those of its dense baseline."""
    if long.empty:
        return ({}, {}), ({}, {})
    records = _pruned_records(long).get(method, [])
    tasks = ({r["dataset"]: tables._value(r) for r in records},
             {r["dataset"]: tables.score_stderr(r) for r in records})
    dense_cells, dense_runs = _dense_cells(long)
    dense: _Tasks = ({}, {})
    for rec in records:
        base = rec["baseline_run"]
        if not tables._isna(base) and (int(base), rec["dataset"]) in dense_cells:
            _put_task(dense, dense_cells[(int(base), rec["dataset"])])
    if records and records[0]["group"] == tables.OWN_GROUP:
        base = records[0]["baseline_run"]  # the dense run's tasks the pruned run lacks
        if not tables._isna(base):
            for rec in dense_runs.get(int(base), []):
                if rec["dataset"] not in dense[0]:
                    _put_task(dense, rec)
    return tasks, dense


_CELL_COLUMNS = ("dataset", "status", "value", "stderr", "baseline_run", "run_id", "group")


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return rows[[c for c in _CELL_COLUMNS if c in rows]].to_dict("records")


@tables.frame_cache()
def _pruned_records(long: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The pruned rows of a per-task frame by method (read only)."""
    found: dict[str, list[dict[str, Any]]] = {}
    pruned = long[long["role"] == "pruned"]
    for method, rec in zip(pruned["method"].tolist(), _records(pruned), strict=True):
        found.setdefault(method, []).append(rec)
    return found


@tables.frame_cache()
def _dense_cells(long: pd.DataFrame) -> tuple[dict[tuple[int, Any], dict[str, Any]],
                                              dict[int, list[dict[str, Any]]]]:
    """The dense scores of a per-task frame by (run, task), the last of each, and by run."""
    cells: dict[tuple[int, Any], dict[str, Any]] = {}
    runs: dict[int, list[dict[str, Any]]] = {}
    for rec in _records(long[long["role"] == "dense"]):
        cells[(int(rec["run_id"]), rec["dataset"])] = rec
        runs.setdefault(int(rec["run_id"]), []).append(rec)
    return cells, runs


def _put_task(into: _Tasks, rec: Mapping[str, Any]) -> None:
    into[0][rec["dataset"]] = tables._value(rec)
    into[1][rec["dataset"]] = tables.score_stderr(rec)


def level_findings(ppl: pd.DataFrame, zs: pd.DataFrame, model: str, level: str,
                   metric: str = "acc", evaluation: str | None = None,
                   ppl_frame: pd.DataFrame | None = None) -> list[findings.Finding]:
    results, dense, reference = level_results(ppl, zs, model, level, metric, evaluation,
                                              ppl_frame)
    if not results:
        return []
    return findings.sparsity_findings(results, dense, reference)
