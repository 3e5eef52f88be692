"""The zero-shot table's Python path before it was vectorized (stop 25's row-by-row code, with
the run's label words in the Method column), kept as the independent computation
``tests/test_zero_shot_table.py`` compares ``tables.zero_shot_table`` with, cell by cell."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import noise
from core.analysis.retention import average, retention
from core.present.frames import _sort_rows
from core.present.labels import MISSING, TEXT, record_label, task_key, zs_evaluation_label
from core.present.tables.common import _join, _values
from core.present.tables.zero_shot import (
    ACC_INTERVAL,
    RETENTION_INTERVAL,
    _zs_baselines,
    is_failed,
    zero_shot_scores,
)


class RunScores:
    """The tasks each zero-shot run attempted and its 'ok' scores."""

    def __init__(self, scores: pd.DataFrame) -> None:
        self.attempted: dict[int, set[str]] = {}
        self.values: dict[int, dict[str, float]] = {}
        self.errors: dict[int, dict[str, float]] = {}
        se = (scores["stderr"].to_numpy(dtype=float, na_value=np.nan) if "stderr" in scores
              else np.full(len(scores), np.nan))
        for rid, task, value, error in zip(scores["run_id"], scores["dataset"], _values(scores),
                                           se, strict=True):
            self.attempted.setdefault(rid, set()).add(task)
            scored = self.values.setdefault(rid, {})
            if value == value:
                scored[task] = float(value)
                self.errors.setdefault(rid, {})[task] = float(error)

    def average_se(self, run: int, tasks: Iterable[str]) -> float:
        mine = self.errors.get(run, {})
        return noise.mean_se(mine.get(t, math.nan) for t in tasks)


def reference_frame(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """The table's frame, one record per run built in Python."""
    scores = zero_shot_scores(rows, metric)
    runs_frame = _sort_rows(scores.drop_duplicates("run_id"), ["model"])
    runs = RunScores(scores)
    failed_rows = scores[[is_failed(st, n) for st, n in
                          zip(scores["status"], scores["note"], strict=True)]]
    failed = failed_rows.groupby("run_id")["dataset"].agg(
        lambda t: sorted(t, key=task_key)).to_dict()
    chosen, why = _zs_baselines(scores, runs_frame)
    return pd.DataFrame([_record(rec, runs, failed.get(rec["run_id"], []),
                                 chosen.get(rec["run_id"]),
                                 "" if rec["run_id"] in chosen else why.zero_shot(rec))
                         for rec in runs_frame.to_dict("records")])


def _record(rec: Mapping[str, Any], runs: RunScores, failed: list[str], base: int | None,
            why: str) -> dict[str, Any]:
    scores = runs.values[rec["run_id"]]
    n_tasks = len(runs.attempted[rec["run_id"]])
    notes = []
    if len(scores) < n_tasks:
        detail = f"{', '.join(failed)} failed" if failed else "others have no value"
        if failed and len(failed) < n_tasks - len(scores):
            detail += ", others have no value"
        notes.append(f"average over {len(scores)} of {n_tasks} tasks ({detail}; not counted)")
    dense = runs.values.get(base, {}) if base is not None else None
    ret, used = retention(scores, dense) if dense is not None else (math.nan, 0)
    accuracy = average(scores.values())
    ret_ci = _retention_interval(runs, rec["run_id"], base, ret) if used else ""
    if base is None:
        notes.append(why)
    elif scores and used < max(len(scores), len(dense)):
        notes.append(f"retention over the {used} tasks shared with dense run {base}")
    return {
        "Model": rec["model"], "Method": record_label(rec), "Tasks": len(scores),
        "Accuracy": accuracy, TEXT + "Accuracy": None if scores else MISSING,
        ACC_INTERVAL: _percent(accuracy, runs.average_se(rec["run_id"], scores)),
        "Retention": ret, TEXT + "Retention": None if not math.isnan(ret) else "",
        RETENTION_INTERVAL: ret_ci, "Evaluation": zs_evaluation_label(rec["spec"]),
        "Origin": rec["origin_label"], "Source": rec["source_label"], "Run": rec["run_id"],
        "Baseline run": base if base is not None else math.nan, "Note": _join(*notes),
        "_method": rec["method"], "_spec": rec["spec"]}


def _percent(value: float, se: float) -> str:
    low, high = noise.interval(value, se)
    return f"{low * 100:.2f}% to {high * 100:.2f}%" if low == low else ""


def _retention_interval(runs: RunScores, run: int, base: int | None, ret: float) -> str:
    if base is None or base == run or ret != ret:
        return ""
    common = sorted(runs.values[run].keys() & runs.values.get(base, {}).keys())
    dense = average(runs.values[base][t] for t in common)
    se = noise.ratio_se(ret * dense, runs.average_se(run, common), dense,
                        runs.average_se(base, common))
    text = _percent(ret, se)
    if text and noise.within_noise(ret - 1.0, se):
        text += f" ({noise.WITHIN_NOISE})"
    return text
