"""Uncertainty of a difference: 95% intervals from standard errors, and "within noise".

The formulas the tables, charts and findings share:

* A zero-shot accuracy is a mean over a task's examples; lm-eval stores its standard error
  ``se``.  The difference of two accuracies (a run and its dense baseline, or two methods) has
  ``se = sqrt(se_a² + se_b²)``: the two are treated as independent.  Both are scored on the same
  examples, so the true error of the difference is usually smaller: the interval is on the
  cautious side, and a difference called "beyond noise" is one at least that clear.
* The average over n tasks of such differences has ``se = sqrt(Σ se_t²) / n``.
* The 95% interval is ``difference ± 1.96 × se``.  A difference whose interval holds 0 is
  *within noise*: neither better nor worse.  Without a standard error on either side (published
  figures print none) there is no interval and nothing is called within noise.
* A perplexity is ``exp(mean NLL)`` over equal windows; the run stores each window's mean NLL.
  Its interval is Student's t interval of the mean window NLL, exponentiated.  The change of a
  run against its dense baseline (or another run) on the same windows is paired: the interval
  of the mean per-window difference of NLL, as ``(exp(d) - 1) x 100`` %.  These are the normal
  (t) intervals rather than a bootstrap over windows: tables of thousands of rows compute them
  per row, and on the 16-64 windows a run evaluates they agree with a percentile bootstrap
  (checked in tests/test_noise.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054
WITHIN_NOISE = "within noise"


def _known(value: float | None) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(float(value))


def combined_se(*errors: float | None) -> float:
    """The standard error of a sum or difference of independent values; NaN when one lacks
    its standard error (the zero-shot table calls this for each of 10,000 runs: one pass)."""
    total = 0.0
    for error in errors:
        if error is None or isinstance(error, bool):
            return math.nan
        total += float(error) ** 2
    return math.sqrt(total) if errors and math.isfinite(total) else math.nan


def mean_se(errors: Iterable[float | None]) -> float:
    """The standard error of the mean of independent values with these standard errors."""
    errors = list(errors)
    if not errors:
        return math.nan
    return combined_se(*errors) / len(errors)


def interval(value: float, se: float) -> tuple[float, float]:
    """The 95% interval ``value ± 1.96 se`` (NaNs when either is unknown)."""
    if not (_known(value) and _known(se)):
        return math.nan, math.nan
    return value - Z95 * se, value + Z95 * se


def within_noise(value: float, se: float) -> bool:
    """Whether the 95% interval of a difference holds 0 (False when there is no interval)."""
    return interval_holds_zero(*interval(value, se))


def interval_text(value: float, se: float, unit: str = "", decimals: int = 2) -> str:
    """'-3.10 to +0.92 points' ('' without an interval)."""
    low, high = interval(value, se)
    if not _known(low):
        return ""
    return f"{low:+.{decimals}f} to {high:+.{decimals}f}{unit}"


def percent_bounds_text(low: float, high: float) -> str:
    """'+3.10% to +8.02%': an interval of a relative change in %."""
    return f"{low:+.2f}% to {high:+.2f}%"


# -- perplexity: intervals from the per-window NLLs --------------------------------------------
#: Two-sided 95% quantiles of Student's t for 1 to 30 degrees of freedom (beyond: ``Z95``).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The 95% two-sided quantile of Student's t with ``df`` degrees of freedom."""
    return _T95[df - 1] if 1 <= df <= len(_T95) else Z95


def ppl_interval(nlls: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of a perplexity ``exp(mean window NLL)`` from its windows' mean NLLs
    (every window predicts the same number of tokens, so the windows weigh the same): Student's
    t interval of the mean over n - 1 degrees of freedom, exponentiated; NaNs with fewer than
    two windows or a non-finite one (``ppl_intervals`` of one row)."""
    low, high = ppl_intervals([list(nlls)])
    return float(low[0]), float(high[0])


def ppl_change_interval(nlls: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the relative perplexity change (%) of a run against ``base``,
    evaluated on the same windows: from the per-window differences of mean NLL (paired, so
    the windows' own difficulty cancels), ``(exp(mean difference) - 1) x 100`` at both ends.
    NaNs when the two were not evaluated on the same number of windows
    (``ppl_change_intervals`` of one pair)."""
    low, high = ppl_change_intervals([list(nlls), list(base)], [1, -1])
    return float(low[0]), float(high[0])


def interval_holds_zero(low: float, high: float) -> bool:
    """Whether a known interval holds 0 (within noise)."""
    return _known(low) and _known(high) and low <= 0.0 <= high


#: Positions and stacked values of the finite per-window arrays, by window count.
Stacked = dict[int, tuple[np.ndarray, np.ndarray]]


def stack_windows(arrays: Sequence[Any]) -> Stacked:
    """Positions and stacked values of the finite per-window arrays, by window count (>= 2;
    anything else, None or NaN, has no windows): once per table, for both of its intervals."""
    kinds = (list, tuple, np.ndarray)  # isinstance of a tuple: 3x faster than of a union
    lengths = np.fromiter((len(v) if isinstance(v, kinds) else 0 for v in arrays),
                          dtype=np.int64, count=len(arrays))
    values = np.fromiter(arrays, dtype=object, count=len(arrays))  # each array one element
    out = {}
    for n in np.unique(lengths[lengths >= 2]).tolist():
        positions = np.flatnonzero(lengths == n)
        rows = [np.ma.filled(v, np.nan) if isinstance(v, np.ma.MaskedArray) else v
                for v in values[positions].tolist()]  # a NULL window (none are written): NaN
        matrix = np.concatenate(rows).astype(float, copy=False).reshape(len(rows), n)
        keep = np.isfinite(matrix).all(axis=1)
        out[n] = (positions[keep], matrix[keep])
    return out


def _t_bounds(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise 95% t interval of the mean of each row of ``diffs``."""
    n = diffs.shape[1]
    mean = diffs.mean(axis=1)
    half = t95(n - 1) * diffs.std(axis=1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def ppl_intervals(nlls: Sequence[Any], stacked: Stacked | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``ppl_interval`` of each row's window NLLs (None: no windows), worked out per window
    count on stacked arrays (``stack_windows(nlls)``, when the caller has it): a table of
    30,000 rows takes milliseconds."""
    low, high = np.full(len(nlls), np.nan), np.full(len(nlls), np.nan)
    for positions, matrix in (stacked or stack_windows(nlls)).values():
        lo, hi = _t_bounds(matrix)
        low[positions], high[positions] = np.exp(lo), np.exp(hi)
    return low, high


def ppl_change_intervals(nlls: Sequence[Any], bases: Sequence[int],
                         stacked: Stacked | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``ppl_change_interval`` of each row against the row at ``bases[i]`` (-1: none), both
    rows' windows paired; NaN where either has no windows or their counts differ."""
    low, high = np.full(len(nlls), np.nan), np.full(len(nlls), np.nan)
    stacked = stacked if stacked is not None else stack_windows(nlls)
    count = np.full(len(nlls), -1)  # each row's window count (-1: none) and its stacked row
    slot = np.zeros(len(nlls), dtype=int)
    for n, (positions, _) in stacked.items():
        count[positions], slot[positions] = n, np.arange(len(positions))
    base = np.asarray(bases, dtype=int)
    paired = (base >= 0) & (count >= 0)
    paired[paired] &= count[base[paired]] == count[paired]
    for n, (_, matrix) in stacked.items():
        rows = np.flatnonzero(paired & (count == n))
        if len(rows):
            lo, hi = _t_bounds(matrix[slot[rows]] - matrix[slot[base[rows]]])
            low[rows], high[rows] = np.expm1(lo) * 100.0, np.expm1(hi) * 100.0
    return low, high


def ratio_se(a: float, se_a: float, b: float, se_b: float) -> float:
    """The standard error of ``a / b`` for independent ``a`` and ``b`` (delta method)."""
    if not all(_known(v) for v in (a, se_a, b, se_b)) or not a or not b:
        return math.nan
    return abs(a / b) * math.sqrt((se_a / a) ** 2 + (se_b / b) ** 2)


# -- whole columns at once (a table of 10,000 runs) ---------------------------------------------
def intervals(values: np.ndarray, ses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``interval`` of each pair of ``values`` and ``ses`` (NaNs where either is unknown)."""
    values, ses = np.asarray(values, dtype=float), np.asarray(ses, dtype=float)
    known = np.isfinite(values) & np.isfinite(ses)
    return (np.where(known, values - Z95 * ses, np.nan),
            np.where(known, values + Z95 * ses, np.nan))


def holds_zero(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``interval_holds_zero`` of each pair of bounds."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(low) & np.isfinite(high) & (low <= 0.0) & (high >= 0.0)


def ratio_ses(a: np.ndarray, se_a: np.ndarray, b: np.ndarray, se_b: np.ndarray) -> np.ndarray:
    """``ratio_se`` of each row of the four columns."""
    a, se_a, b, se_b = (np.asarray(x, dtype=float) for x in (a, se_a, b, se_b))
    known = (np.isfinite(a) & np.isfinite(se_a) & np.isfinite(b) & np.isfinite(se_b)
             & (a != 0) & (b != 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, np.abs(a / b) * np.sqrt((se_a / a) ** 2 + (se_b / b) ** 2),
                        np.nan)
