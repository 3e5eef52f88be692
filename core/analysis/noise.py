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
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054
WITHIN_NOISE = "within noise"


def _known(value: float | None) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(float(value))


def combined_se(*errors: float | None) -> float:
    """The standard error of a sum or difference of independent values; NaN when one lacks
    its standard error."""
    if not errors or not all(_known(e) for e in errors):
        return math.nan
    return math.sqrt(sum(float(e) ** 2 for e in errors))


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
    low, high = interval(value, se)
    return _known(low) and low <= 0.0 <= high


def interval_text(value: float, se: float, unit: str = "", decimals: int = 2) -> str:
    """'-3.10 to +0.92 points' ('' without an interval)."""
    low, high = interval(value, se)
    if not _known(low):
        return ""
    return f"{low:+.{decimals}f} to {high:+.{decimals}f}{unit}"
