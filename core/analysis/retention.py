"""Relative change, percent of a reference, averages and retention against dense: the formulas
the tables and findings share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def relative_change(value: float, baseline: float) -> float:
    """Relative change in percent: (value - baseline) / baseline x 100."""
    return (value - baseline) / baseline * 100.0


def percent_of(value: float, reference: float) -> float:
    """value as a percentage of reference."""
    return value / reference * 100.0


def average(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


def retention(scores: Mapping[str, float], dense: Mapping[str, float]) -> tuple[float, int]:
    """Pruned average / dense average over the tasks both have; returns (ratio, tasks used)."""
    common = sorted(scores.keys() & dense.keys())
    if not common:
        return math.nan, 0
    base = average(dense[t] for t in common)
    if not base:
        return math.nan, len(common)
    return average(scores[t] for t in common) / base, len(common)
