"""Findings on hand-made result sets: signs, ties, diverged runs, missing tasks, layer spreads."""

from __future__ import annotations

import math

import pytest

from core.analysis import findings as F

DENSE = F.Result("Dense", {"wikitext2": 5.114},
                 {"piqa": 0.7813, "hellaswag": 0.5710, "arc_easy": 0.7546, "boolq": 0.7933,
                  "rte": 0.6390})
MAG30 = F.Result("Magnitude 30%", {"wikitext2": 5.735},
                 {"piqa": 0.7840, "hellaswag": 0.5813, "arc_easy": 0.7597, "boolq": 0.7520,
                  "rte": 0.5776})
WANDA30 = F.Result("Wanda 30%", {"wikitext2": 5.5244},
                   {"piqa": 0.7802, "hellaswag": 0.5656, "arc_easy": 0.7559, "boolq": 0.7856,
                    "rte": 0.5668})


def texts(found: list[F.Finding]) -> str:
    return "\n".join(f.text for f in found)


def test_a_negative_accuracy_change_is_worse_not_an_improvement() -> None:
    """Seed 000 printed 'Wanda improves by -0.01 percentage points' at 30%."""
    found = F.accuracy_change(WANDA30, MAG30)
    assert found is not None
    assert found.value == pytest.approx((sum(WANDA30.tasks.values()) - sum(MAG30.tasks.values()))
                                        / 5 * 100)
    assert found.verdict == F.WORSE
    assert "0.01 points lower than Magnitude 30% (69.09%)" in found.text
    assert "improves" not in found.text and "-0.01" not in found.text


def test_relative_perplexity_change_and_its_sign() -> None:
    found = F.perplexity_change(WANDA30, MAG30, "wikitext2")
    expected = (5.5244 - 5.735) / 5.735 * 100
    assert found is not None and found.value == pytest.approx(expected)
    assert found.verdict == F.BETTER
    assert f"{abs(expected):.2f}% lower than Magnitude 30% (5.74): better" in found.text
    worse = F.perplexity_change(MAG30, DENSE, "wikitext2")
    assert worse is not None and worse.verdict == F.WORSE
    assert f"{(5.735 - 5.114) / 5.114 * 100:.2f}% higher than Dense" in worse.text


def test_a_diverged_run_is_never_a_number() -> None:
    """Seed 000 printed 'Wanda improves by nan% over Magnitude' at 70%."""
    mag70 = F.Result("Magnitude 70%", {"wikitext2": math.nan}, {"piqa": 0.5277})
    wanda70 = F.Result("Wanda 70%", {"wikitext2": 68.8045}, {"piqa": 0.5424})
    against = F.perplexity_change(wanda70, mag70, "wikitext2")
    own = F.perplexity_change(mag70, DENSE, "wikitext2")
    both = F.perplexity_change(mag70, F.Result("X", {"wikitext2": math.inf}), "wikitext2")
    for found in (against, own, both):
        assert found is not None and found.verdict == F.DIVERGED and found.value is None
        assert "nan" not in found.text.lower() and "inf" not in found.text.lower()
        assert "diverged" in found.text
    assert "no relative change is defined" in against.text
    assert own.text.startswith("**Magnitude 70%** diverged on WikiText-2")


def test_a_collapsed_run_is_named_so_never_worse() -> None:
    """Issue 15: a perplexity above the vocabulary size read '+16,631,103% higher: worse'."""
    mag95 = F.Result("Magnitude 95%", {"wikitext2": math.nan}, {}, collapsed=frozenset(
        {"wikitext2"}))
    wanda95 = F.Result("Wanda 95%", {"wikitext2": 41.85}, {})
    own = F.perplexity_change(mag95, DENSE, "wikitext2")
    against = F.perplexity_change(wanda95, mag95, "wikitext2")
    both = F.perplexity_change(mag95, F.Result("X", {}, collapsed=frozenset({"wikitext2"})),
                               "wikitext2")
    for found in (own, against, both):
        assert found is not None and found.verdict == F.COLLAPSED and found.value is None
        assert "collapsed" in found.text and "diverged" not in found.text
        assert "worse than uniform guessing" in found.text
        assert "higher than" not in found.text and ": worse" not in found.text
    assert own.text == ("**Magnitude 95%** collapsed on WikiText-2 (worse than uniform "
                        "guessing); Dense has 5.11.")
    assert "no relative change is defined" in against.text
    assert both.text.startswith("**Magnitude 95%** and X both collapsed on WikiText-2")


def test_collapsed_and_diverged_stay_distinct() -> None:
    collapsed = F.Result("A", {"wikitext2": 9e6}, collapsed=frozenset({"wikitext2"}))
    diverged = F.Result("B", {"wikitext2": math.nan})
    one = F.perplexity_change(collapsed, diverged, "wikitext2")
    other = F.perplexity_change(diverged, collapsed, "wikitext2")
    assert one.verdict == F.COLLAPSED and other.verdict == F.DIVERGED
    assert one.text == ("**A** collapsed on WikiText-2 (worse than uniform guessing); B diverged "
                        "(no finite perplexity).")
    assert "9000000" not in one.text and "9,000,000" not in one.text  # the stored value unused
    assert [f.verdict for f in F.sparsity_findings([collapsed], diverged)] == [F.COLLAPSED]


def test_no_sentence_without_data() -> None:
    no_ppl = F.Result("Wanda 50%", {}, {})
    assert F.perplexity_change(no_ppl, DENSE, "wikitext2") is None
    assert F.accuracy_change(no_ppl, DENSE) is None
    assert F.task_extremes(no_ppl, DENSE) == []
    assert F.coverage(no_ppl, [DENSE]) is None
    assert F.sparsity_findings([no_ppl], DENSE) == []
    assert F.sparsity_findings([WANDA30], None, datasets=["wikitext2"]) == []
    assert F.layer_findings({}) == []
    assert F.summary_findings({"std": (math.nan, None)}) == []


def test_a_change_that_shows_as_zero_is_the_same() -> None:
    a = F.Result("A", {"wikitext2": 6.4200}, {"piqa": 0.70001})
    b = F.Result("B", {"wikitext2": 6.4201}, {"piqa": 0.70})
    ppl = F.perplexity_change(a, b, "wikitext2")
    acc = F.accuracy_change(a, b)
    assert ppl.verdict == acc.verdict == F.SAME
    assert "same perplexity" in ppl.text and "same average accuracy" in acc.text
    assert "-0.00" not in ppl.text + acc.text


def test_most_and_least_affected_tasks_by_absolute_and_relative_drop() -> None:
    dense = F.Result("Dense", tasks={"a": 0.80, "b": 0.40, "c": 0.60})
    pruned = F.Result("P", tasks={"a": 0.70, "b": 0.32, "c": 0.63})
    # absolute: a -10, b -8, c +3 points; relative: a -12.5%, b -20%, c +5%
    found = texts(F.task_extremes(pruned, dense))
    assert "Most affected task for **P** by absolute change: a, 10.00 points lower" in found
    assert "Least affected task for **P** by absolute change: c, 3.00 points higher than " \
           "Dense: better" in found
    assert "Most affected task for **P** by relative change: b, 20.00% lower" in found
    assert "Least affected task for **P** by relative change: c, 5.00% higher" in found


def test_tied_tasks_are_named_together() -> None:
    dense = F.Result("Dense", tasks={"a": 0.80, "b": 0.80, "c": 0.50})
    pruned = F.Result("P", tasks={"a": 0.70, "b": 0.70004, "c": 0.49})
    found = F.task_extremes(pruned, dense)
    most_abs = found[0]
    assert most_abs.text.startswith("Most affected task for **P** by absolute change: a and b "
                                    "each, 10.00 points lower")
    equal = F.task_extremes(F.Result("Q", tasks={"a": 0.7, "b": 0.7}),
                            F.Result("Dense", tasks={"a": 0.8, "b": 0.8}))
    assert [f.text for f in equal][0] == ("All 2 tasks for **Q** by absolute change: each "
                                          "10.00 points lower than Dense: worse.")


def test_missing_tasks_are_left_out_and_named() -> None:
    dense = F.Result("Dense", tasks={"a": 0.8, "b": 0.6, "c": 0.5})
    pruned = F.Result("P", tasks={"a": 0.7, "b": math.nan})  # b failed, c not evaluated
    acc = F.accuracy_change(pruned, dense, dense=True)
    assert acc is not None and acc.value == pytest.approx(-10.0)
    assert "over the only task both scored (a)" in acc.text and "retention 87.50%" in acc.text
    cover = F.coverage(pruned, [dense])
    assert cover is not None
    assert cover.text == "Left out of **P**'s task comparisons: b and c (no score for P)."
    single = F.task_extremes(pruned, dense)
    assert single[0].text.startswith("The only task both scored (a) for **P**")


def test_sparsity_findings_order_and_reference() -> None:
    found = F.sparsity_findings([MAG30, WANDA30], DENSE, reference="Magnitude 30%")
    topics = [f.topic for f in found]
    assert topics[:4] == ["perplexity", "accuracy", "perplexity", "accuracy"]  # each vs dense
    pairwise = [f for f in found[4:6]]
    assert all("than Magnitude 30%" in f.text for f in pairwise)
    assert not any("than Wanda 30%" in f.text for f in found)
    per_label = F.sparsity_findings([WANDA30], {"Wanda 30%": DENSE})
    assert "retention 97.60%" in texts(per_label)


# -- layer statistics ---------------------------------------------------------------------------
def test_zero_spread_is_uniform_never_adaptive() -> None:
    """Seed 002 read a 0.00% standard deviation as 'Wanda adapts pruning to layer importance'."""
    found = F.layer_findings({b: 0.5003 for b in range(32)}, 0.5)
    text = texts(found)
    assert "uniform" in text and "adapt" not in text.replace("nothing is adapted", "")
    assert "rises" not in text and "falls" not in text and "trend" not in text
    assert "every block 50.03%" in text
    assert "0.03 points above the 50% target" in text


def test_seed_002_summary_is_practically_uniform() -> None:
    summary = {"mean": (0.5003, None), "std": (0.0, None), "min": (0.5003, 0),
               "max": (0.5004, 10)}
    text = texts(F.summary_findings(summary, 0.5))
    assert "lowest 50.03% (block 0), highest 50.04% (block 10)" in text
    assert "practically uniform" in text and "adapts" not in text
    assert "lower sparsity" not in text  # no trend claimed without per-block values


@pytest.mark.parametrize(("values", "word"), [
    ([0.48, 0.49, 0.50, 0.51, 0.52, 0.53], "rises"),
    ([0.53, 0.52, 0.51, 0.50, 0.49, 0.48], "falls"),
    ([0.50, 0.53, 0.47, 0.47, 0.53, 0.50], "No consistent trend"),
])
def test_block_trend_is_worded_by_the_data(values: list[float], word: str) -> None:
    blocks = dict(enumerate(values))
    found = F.layer_findings(blocks)
    trend = [f for f in found if "trend" in f.text or "rises" in f.text or "falls" in f.text]
    assert len(trend) == 1 and word in trend[0].text
    assert trend[0].value == pytest.approx(F.slope(blocks))
    early, late = sum(values[:2]) / 2 * 100, sum(values[-2:]) / 2 * 100
    assert f"first third of the blocks {early:.2f}%, last third {late:.2f}%" in trend[0].text


def test_owl_targets_are_described() -> None:
    owl = {0: 0.45, 1: 0.50, 2: 0.55}
    found = texts(F.layer_findings({0: 0.45, 1: 0.50, 2: 0.551}, 0.5, owl))
    assert "as set by the OWL block targets" in found
    assert "OWL block targets range from 45.00% (block 0) to 55.00% (block 2), mean 50.00%" in found
    assert "within 0.10 points of the OWL targets (largest gap at block 2)" in found


# -- uncertainty: differences inside and outside the noise -------------------------------------
def with_se(result: F.Result, se: float) -> F.Result:
    return F.Result(result.label, result.ppl, result.tasks, result.run, result.collapsed,
                    dict.fromkeys(result.tasks, se))


def test_seed_000s_tiny_accuracy_change_is_within_noise() -> None:
    """Seed 000 compares Wanda and Magnitude at 30% by 0.01 points; with lm-eval's typical
    standard error of 1 point per task that is noise, never 'worse'."""
    found = F.accuracy_change(with_se(WANDA30, 0.01), with_se(MAG30, 0.01))
    se = math.sqrt(5 * 2 * 0.01 ** 2) / 5 * 100  # the mean of 5 independent differences
    low, high = found.value - 1.96 * se, found.value + 1.96 * se
    assert found.verdict == F.WITHIN_NOISE and low < 0 < high
    assert f"(95% interval {low:+.2f} to {high:+.2f} points): within noise" in found.text
    assert "worse" not in found.text and "better" not in found.text


def test_a_large_accuracy_change_is_beyond_noise() -> None:
    dense, pruned = with_se(DENSE, 0.005), with_se(MAG30, 0.005)
    shifted = F.Result("Magnitude 70%", {}, {t: v - 0.2 for t, v in pruned.tasks.items()},
                       task_se=pruned.task_se)
    found = F.accuracy_change(shifted, dense, dense=True)
    assert found.verdict == F.WORSE and "95% interval" in found.text
    # without standard errors (published figures) there is no interval: the sign decides
    assert F.accuracy_change(F.Result("M", {}, shifted.tasks), DENSE).verdict == F.WORSE
    assert "interval" not in F.accuracy_change(F.Result("M", {}, shifted.tasks), DENSE).text


def test_task_extremes_inside_the_noise_are_not_better_or_worse() -> None:
    found = F.task_extremes(with_se(MAG30, 0.02), with_se(DENSE, 0.02))
    by_text = {f.text.split(":")[0]: f for f in found}
    # rte falls 6.14 points (se 2.83 points: beyond noise); the largest rise, hellaswag by
    # 1.03 points, is within noise
    most = by_text["Most affected task for **Magnitude 30%** by absolute change"]
    least = by_text["Least affected task for **Magnitude 30%** by absolute change"]
    assert most.verdict == F.WORSE and "rte" in most.text
    assert least.verdict == F.WITHIN_NOISE and "within noise" in least.text
    assert not any(f.verdict in (F.BETTER,) for f in found)


def test_a_perplexity_change_inside_its_paired_interval_is_within_noise() -> None:
    import numpy as np

    rng = np.random.default_rng(2)
    hard = rng.normal(2.5, 0.4, 32)
    dense = hard + rng.normal(0, 0.02, 32)
    near = hard + rng.normal(0.002, 0.02, 32)
    far = hard + 0.08 + rng.normal(0, 0.02, 32)

    def result(label: str, nlls: np.ndarray) -> F.Result:
        return F.Result(label, {"wikitext2": math.exp(nlls.mean())},
                        ppl_nlls={"wikitext2": list(nlls)})

    found = F.perplexity_change(result("Wanda 50%", near), result("Dense", dense), "wikitext2")
    assert found.verdict == F.WITHIN_NOISE and "paired over the same windows" in found.text
    assert "worse" not in found.text and "better" not in found.text
    beyond = F.perplexity_change(result("Wanda 70%", far), result("Dense", dense), "wikitext2")
    assert beyond.verdict == F.WORSE and "95% interval +" in beyond.text
    # windows missing on one side: the sign decides, no interval is claimed
    plain = F.perplexity_change(F.Result("M", {"wikitext2": math.exp(near.mean())}),
                                result("Dense", dense), "wikitext2")
    assert plain.verdict in (F.WORSE, F.BETTER) and "interval" not in plain.text
