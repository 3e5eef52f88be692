"""Intervals of differences (core.analysis.noise) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from core.analysis import noise


def test_t_quantiles_are_students() -> None:
    for df in (1, 2, 5, 10, 29, 30):
        assert noise.t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
    assert noise.t95(200) == noise.Z95


def test_difference_interval_and_within_noise() -> None:
    se = noise.combined_se(0.01, 0.02)
    assert se == pytest.approx(math.sqrt(0.01 ** 2 + 0.02 ** 2))
    assert noise.interval(1.0, 0.5) == pytest.approx((1.0 - 1.96 * 0.5, 1.0 + 1.96 * 0.5),
                                                     abs=1e-3)
    assert noise.within_noise(0.5, 0.5) and not noise.within_noise(2.0, 0.5)
    # no standard error on one side: no interval, never called within noise
    assert math.isnan(noise.combined_se(0.01, None)) and not noise.within_noise(0.1, math.nan)
    assert noise.mean_se([0.3, 0.4]) == pytest.approx(0.25)
    assert noise.interval_text(2.0, 1.0, " points") == "+0.04 to +3.96 points"


def test_perplexity_interval_is_the_t_interval_of_the_mean_nll() -> None:
    rng = np.random.default_rng(0)
    nlls = rng.normal(2.5, 0.3, 24)
    low, high = noise.ppl_interval(list(nlls))
    half = stats.t.ppf(0.975, 23) * nlls.std(ddof=1) / math.sqrt(24)
    assert (low, high) == pytest.approx((math.exp(nlls.mean() - half),
                                         math.exp(nlls.mean() + half)), rel=1e-4)
    assert low < math.exp(nlls.mean()) < high
    assert all(math.isnan(v) for v in noise.ppl_interval([2.0]))


def paired_bootstrap(pruned: np.ndarray, dense: np.ndarray, rounds: int = 20000
                     ) -> tuple[float, float]:
    """Percentile bootstrap over windows of the relative perplexity change (%)."""
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(pruned), (rounds, len(pruned)))
    ratio = np.exp(pruned[picks].mean(axis=1) - dense[picks].mean(axis=1))
    low, high = np.percentile((ratio - 1) * 100, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize("windows", [16, 32, 64])
def test_paired_change_interval_agrees_with_a_bootstrap_over_windows(windows: int) -> None:
    """Windows differ a lot in difficulty (shared by both models) and little in the pruned
    model's extra loss: the paired interval is narrow and matches the bootstrap's."""
    rng = np.random.default_rng(windows)
    difficulty = rng.normal(2.6, 0.4, windows)
    dense = difficulty + rng.normal(0, 0.02, windows)
    pruned = difficulty + 0.05 + rng.normal(0, 0.03, windows)
    low, high = noise.ppl_change_interval(list(pruned), list(dense))
    boot_low, boot_high = paired_bootstrap(pruned, dense)
    width = boot_high - boot_low
    assert abs(low - boot_low) < 0.2 * width and abs(high - boot_high) < 0.2 * width
    assert not noise.interval_holds_zero(low, high)  # +5% NLL is clearly beyond noise
    # an unpaired interval would be far wider (the windows' difficulty does not cancel)
    unpaired = 1.96 * math.sqrt(pruned.var(ddof=1) / windows + dense.var(ddof=1) / windows)
    assert (math.log1p(high / 100) - math.log1p(low / 100)) < unpaired


def test_change_within_noise_and_mismatched_windows() -> None:
    rng = np.random.default_rng(3)
    dense = rng.normal(2.6, 0.4, 32)
    same = dense + rng.normal(0, 0.05, 32)
    low, high = noise.ppl_change_interval(list(same), list(dense))
    assert noise.interval_holds_zero(low, high)
    assert all(math.isnan(v) for v in noise.ppl_change_interval(list(same[:16]), list(dense)))


def test_table_intervals_equal_the_per_row_formula() -> None:
    """The stacked (vectorised) intervals a table uses equal the scalar ones row by row:
    rows without windows, with other window counts or non-finite NLLs get none."""
    rng = np.random.default_rng(5)
    dense = list(rng.normal(2.6, 0.4, 16))
    rows = [np.array(dense), np.array(dense) + rng.normal(0.1, 0.05, 16), None,
            rng.normal(3, 0.2, 8), np.array([*dense[:15], math.inf]),
            np.array(dense) + rng.normal(0.0, 0.05, 16)]
    low, high = noise.ppl_intervals(rows)
    for i, values in enumerate(rows):
        expected = noise.ppl_interval(list(values)) if values is not None else (math.nan,) * 2
        assert np.allclose((low[i], high[i]), expected, equal_nan=True), i
    bases = [-1, 0, 0, 0, 0, 0]
    low, high = noise.ppl_change_intervals(rows, bases)
    assert np.isnan(low[[0, 2, 3, 4]]).all()  # no base; no windows; 8 vs 16; inf window
    for i in (1, 5):
        assert (low[i], high[i]) == pytest.approx(
            noise.ppl_change_interval(list(rows[i]), dense))
    assert low[1] > 0 and low[5] < 0 < high[5]


def test_stacked_windows_by_count_and_finite_rows_only() -> None:
    rows = [np.array([1.0, 2.0, 3.0]), None, [4.0, 5.0, 6.0], np.array([1.0, np.nan, 2.0]),
            np.ma.masked_array([7.0, 8.0, 9.0], mask=[False, True, False]), [1.0, 2.0],
            np.array([5.0]), math.nan]
    stacked = noise.stack_windows(rows)
    assert sorted(stacked) == [2, 3]
    positions, matrix = stacked[3]
    assert positions.tolist() == [0, 2]  # a NaN window (or a NULL one) leaves its row out
    assert matrix.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert stacked[2][0].tolist() == [5] and stacked[2][1].tolist() == [[1.0, 2.0]]
