"""Findings: sentences generated from the stored numbers with defined formulas (no Streamlit).

The seed reports printed findings such as "improves by -0.01 percentage points", "improves by
nan%" or a 0.00% standard deviation read as "adapts pruning to layer importance".  Here every
sentence is computed and worded from the numbers, so it is right by construction:

* Relative perplexity change of A against B: ``(ppl_A - ppl_B) / ppl_B x 100`` (%).  Negative:
  A has the lower perplexity, which is *better*; positive is *worse*.
* Accuracy change in points of A against B: ``(acc_A - acc_B) x 100`` with accuracies as
  fractions, averaged over the tasks **both** scored.  Positive is *better*.  Retention against
  dense: ``mean(acc_A) / mean(acc_dense)`` over the same common tasks.
* Per task, the change against dense: absolute ``(pruned - dense) x 100`` (points) and relative
  ``(pruned - dense) / dense x 100`` (%).  The *most affected* task has the lowest change (the
  largest decline), the *least affected* the highest; each measure is ranked separately.
* Numbers are compared at the precision they are shown with (two decimals): a change that rounds
  to 0.00 is "the same" (neither better nor worse), and tasks whose changes round to the same
  value are ties, named together.
* An accuracy change whose 95% interval (:mod:`core.analysis.noise`, from lm-eval's standard
  errors) holds 0 is "within noise", never better or worse; the sentence gives the interval.
  So is a perplexity change whose interval, paired over the windows both runs evaluated (from
  their stored per-window NLLs), holds 0.
  Tasks named together use the widest of their intervals.  Without standard errors (published
  figures) no interval is given.
* A perplexity that is not a finite number (or whose status is 'diverged') is "diverged", never a
  number; a comparison with a diverged run says so and gives no relative change.
* A perplexity at or above the model's vocabulary size (status 'collapsed') is "collapsed (worse
  than uniform guessing)", never a number either: no relative change, not "worse".
* A sentence whose inputs are missing is not produced (a missing task is left out of the
  comparisons and named once).
* Layer statistics: the spread over blocks is the population standard deviation; a spread that
  rounds to 0.00 points is called uniform; a trend is stated only from per-block values (three
  blocks or more) when the least-squares slope and the first-third / last-third means agree in
  sign; otherwise the text says there is no consistent trend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from core.analysis import noise

DECIMALS = 2
BETTER, WORSE, SAME, DIVERGED = "better", "worse", "same", "diverged"
WITHIN_NOISE = noise.WITHIN_NOISE
COLLAPSED = "collapsed"
#: How a sentence names a perplexity that is no number, after "<label> <state> on <dataset>".
FAILED_WORDS = {DIVERGED: "no finite perplexity", COLLAPSED: "worse than uniform guessing"}


@dataclass(frozen=True)
class Result:
    """One method at one sparsity (or dense): perplexity per dataset and accuracy per task.

    ``ppl`` maps a dataset to its perplexity; NaN or infinity means the run diverged there (a
    dataset that was not measured is simply absent).  ``collapsed`` names the datasets where the
    perplexity is at or above the vocabulary size: their ``ppl`` value, if any, is never used.
    ``tasks`` maps a task to its accuracy as a fraction; a task without a score is absent.
    """

    label: str
    ppl: Mapping[str, float] = field(default_factory=dict)
    tasks: Mapping[str, float] = field(default_factory=dict)
    run: int | None = None
    collapsed: frozenset[str] = frozenset()
    #: The standard error of each task's accuracy (as a fraction), where the source gives one.
    task_se: Mapping[str, float] = field(default_factory=dict)
    #: Each dataset's per-window mean NLLs, where the run stored them.
    ppl_nlls: Mapping[str, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One generated sentence (Markdown) with what it is about and its verdict."""

    topic: str  # 'perplexity', 'accuracy', 'task', 'coverage', 'layers'
    text: str
    verdict: str | None = None  # better / worse / same / within noise / diverged / collapsed
    value: float | None = None  # the number the sentence states (change, drop, std ...)


# -- formatting ---------------------------------------------------------------------------------
def _r(value: float) -> float:
    """The value as shown (two decimals); -0.0 becomes 0.0."""
    return round(value, DECIMALS) + 0.0


def fmt(value: float, suffix: str = "") -> str:
    return f"{_r(value):.{DECIMALS}f}{suffix}"


def pct(fraction: float) -> str:
    """0.7078 -> '70.78%'."""
    return fmt(fraction * 100, "%")


def finite(value: float | None) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(float(value))


def verdict_of(change: float, higher_is_better: bool, se: float = math.nan) -> str:
    """'same' when the change shows as 0.00; 'within noise' when its 95% interval (from its
    standard error ``se``, when known) holds 0; else 'better' / 'worse' by its sign."""
    if _r(change) == 0:
        return SAME
    if noise.within_noise(change, se):
        return WITHIN_NOISE
    return BETTER if (change > 0) == higher_is_better else WORSE


def _interval_words(change: float, se: float, unit: str) -> str:
    """' (95% interval -3.10 to +0.92 points)', or '' without a standard error."""
    text = noise.interval_text(change, se, unit, DECIMALS)
    return f" (95% interval {text})" if text else ""


def _pair_se(result: Result, reference: Result, task: str) -> float:
    """The standard error of one task's accuracy difference (a fraction; NaN when unknown)."""
    return noise.combined_se(result.task_se.get(task), reference.task_se.get(task))


def join_names(names: Sequence[str]) -> str:
    """['a'] -> 'a'; ['a', 'b'] -> 'a and b'; ['a', 'b', 'c'] -> 'a, b and c'."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def dataset_name(dataset: str) -> str:
    return {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}.get(dataset, dataset)


# -- perplexity ---------------------------------------------------------------------------------
def relative_change(value: float, reference: float) -> float:
    """(value - reference) / reference x 100."""
    return (value - reference) / reference * 100.0


def _measured(result: Result, dataset: str) -> bool:
    return dataset in result.ppl or dataset in result.collapsed


def ppl_state(result: Result, dataset: str) -> str | None:
    """'collapsed' or 'diverged' when ``result``'s perplexity on ``dataset`` is no number to
    compare; None when it is a finite number."""
    if dataset in result.collapsed:
        return COLLAPSED
    return None if finite(result.ppl.get(dataset)) else DIVERGED


def _no_change(result: Result, reference: Result, dataset: str, mine: str | None,
               theirs: str | None) -> Finding:
    """The sentence for a comparison in which one side or both are diverged or collapsed (the
    verdict names the state of ``result``, else that of ``reference``)."""
    on = f"on {dataset_name(dataset)}"
    if mine and mine == theirs:
        return Finding("perplexity", f"**{result.label}** and {reference.label} both {mine} "
                       f"{on} ({FAILED_WORDS[mine]}).", mine)
    if mine:
        other = (f"{reference.label} {theirs} ({FAILED_WORDS[theirs]})" if theirs
                 else f"{reference.label} has {fmt(reference.ppl[dataset])}")
        return Finding("perplexity", f"**{result.label}** {mine} {on} ({FAILED_WORDS[mine]}); "
                       f"{other}.", mine)
    what = DIVERGED if theirs == DIVERGED else f"{COLLAPSED} ({FAILED_WORDS[COLLAPSED]})"
    return Finding("perplexity", f"**{result.label}** has perplexity {fmt(result.ppl[dataset])} "
                   f"{on} while {reference.label} {what}, so no relative change is defined.",
                   theirs)


def perplexity_change(result: Result, reference: Result, dataset: str) -> Finding | None:
    """``result`` against ``reference`` on ``dataset``; None when either has no perplexity."""
    if not _measured(result, dataset) or not _measured(reference, dataset):
        return None
    mine, theirs = ppl_state(result, dataset), ppl_state(reference, dataset)
    if mine or theirs:
        return _no_change(result, reference, dataset, mine, theirs)
    value, ref = result.ppl[dataset], reference.ppl[dataset]
    if ref <= 0:
        return None
    on = f"on {dataset_name(dataset)}"
    change = relative_change(value, ref)
    low, high = noise.ppl_change_interval(result.ppl_nlls.get(dataset, ()),
                                          reference.ppl_nlls.get(dataset, ()))
    verdict = verdict_of(change, higher_is_better=False)
    if verdict != SAME and noise.interval_holds_zero(low, high):
        verdict = WITHIN_NOISE
    if verdict == SAME:
        text = (f"**{result.label}** has the same perplexity as {reference.label} {on} "
                f"({fmt(value)} vs {fmt(ref)}; change {fmt(0.0, '%')}).")
    else:
        direction = "lower" if change < 0 else "higher"
        interval = (f" (95% interval {noise.percent_bounds_text(low, high)}, paired over the "
                    "same windows)" if finite(low) else "")
        text = (f"**{result.label}** has perplexity {fmt(value)} {on}, {fmt(abs(change), '%')} "
                f"{direction} than {reference.label} ({fmt(ref)}){interval}: {verdict}.")
    return Finding("perplexity", text, verdict, change)


# -- accuracy -----------------------------------------------------------------------------------
def _scored(tasks: Mapping[str, float]) -> dict[str, float]:
    return {t: float(v) for t, v in tasks.items() if finite(v)}


def common_tasks(result: Result, reference: Result) -> list[str]:
    """Tasks both have a score for, in the order of ``result``."""
    other = _scored(reference.tasks)
    return [t for t in _scored(result.tasks) if t in other]


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def accuracy_change(result: Result, reference: Result, dense: bool = False) -> Finding | None:
    """Average accuracy of ``result`` against ``reference`` over their common tasks, in points
    (with retention when ``reference`` is the dense baseline); None without a common task."""
    common = common_tasks(result, reference)
    if not common:
        return None
    mine = mean(result.tasks[t] for t in common)
    ref = mean(reference.tasks[t] for t in common)
    change = (mine - ref) * 100.0
    se = noise.mean_se(_pair_se(result, reference, t) for t in common) * 100.0
    verdict = verdict_of(change, higher_is_better=True, se=se)
    over = (f"over the {len(common)} tasks both scored" if len(common) > 1
            else f"over the only task both scored ({common[0]})")
    if _r(change) == 0:
        text = (f"**{result.label}** has the same average accuracy as {reference.label} "
                f"({pct(mine)} vs {pct(ref)}; change {fmt(0.0)} points, {over})")
    else:
        direction = "higher" if change > 0 else "lower"
        text = (f"**{result.label}** has average accuracy {pct(mine)}, {fmt(abs(change))} points "
                f"{direction} than {reference.label} ({pct(ref)}) {over}"
                f"{_interval_words(change, se, ' points')}: {verdict}")
    if dense and ref > 0:
        text += f"; retention {pct(mine / ref)}"
    return Finding("accuracy", text + ".", verdict, change)


@dataclass(frozen=True)
class TaskChange:
    task: str
    points: float  # (pruned - dense) x 100
    relative: float  # (pruned - dense) / dense x 100; NaN when dense is 0
    points_se: float = math.nan  # standard error of ``points``
    relative_se: float = math.nan  # ... and of ``relative`` (the points' error over dense)


def task_changes(result: Result, dense: Result) -> list[TaskChange]:
    """The change of every task both scored, in the order of ``result``."""
    out = []
    for task in common_tasks(result, dense):
        score, base = result.tasks[task], dense.tasks[task]
        se = _pair_se(result, dense, task)
        out.append(TaskChange(task, (score - base) * 100.0,
                              relative_change(score, base) if base else math.nan,
                              se * 100.0, se / base * 100.0 if base else math.nan))
    return out


def _extremes(changes: Sequence[TaskChange], key: str) -> tuple[list[TaskChange],
                                                                   list[TaskChange]]:
    """(lowest, highest) changes by ``key`` at the shown precision (ties kept together)."""
    valid = [c for c in changes if finite(getattr(c, key))]
    if not valid:
        return [], []
    shown = [_r(getattr(c, key)) for c in valid]
    low, high = min(shown), max(shown)
    return ([c for c, s in zip(valid, shown, strict=True) if s == low],
            [c for c, s in zip(valid, shown, strict=True) if s == high])


def _change_words(value: float, unit: str, reference: str, se: float = math.nan) -> str:
    verdict = verdict_of(value, higher_is_better=True, se=se)
    if verdict == SAME:
        return f"no change against {reference} ({fmt(0.0, unit)})"
    direction = "higher" if value > 0 else "lower"
    return (f"{fmt(abs(value), unit)} {direction} than {reference}"
            f"{_interval_words(value, se, unit)}: {verdict}")


def task_extremes(result: Result, dense: Result) -> list[Finding]:
    """Most and least affected task against dense, by absolute and by relative change."""
    changes = task_changes(result, dense)
    if not changes:
        return []
    out = []
    for key, unit, measure in (("points", " points", "absolute change"),
                               ("relative", "%", "relative change")):
        low, high = _extremes(changes, key)
        if not low:
            continue
        value_low, value_high = getattr(low[0], key), getattr(high[0], key)
        names_low = join_names([c.task for c in low])
        each = " each" if len(low) > 1 else ""
        if _r(value_low) == _r(value_high):  # every task shows the same change
            n = len([c for c in changes if finite(getattr(c, key))])
            subject = (f"The only task both scored ({names_low})" if n == 1
                       else f"All {n} tasks")
            se = _widest(changes, key)
            text = (f"{subject} for **{result.label}** by {measure}: {'each ' if n > 1 else ''}"
                    f"{_change_words(value_low, unit, dense.label, se)}.")
            out.append(Finding("task", text, verdict_of(value_low, True, se), value_low))
            continue
        se_low, se_high = _widest(low, key), _widest(high, key)
        out.append(Finding(
            "task", f"Most affected task for **{result.label}** by {measure}: {names_low}"
                    f"{each}, {_change_words(value_low, unit, dense.label, se_low)}.",
            verdict_of(value_low, True, se_low), value_low))
        names_high = join_names([c.task for c in high])
        each = " each" if len(high) > 1 else ""
        out.append(Finding(
            "task", f"Least affected task for **{result.label}** by {measure}: {names_high}"
                    f"{each}, {_change_words(value_high, unit, dense.label, se_high)}.",
            verdict_of(value_high, True, se_high), value_high))
    return out


def _widest(changes: Sequence[TaskChange], key: str) -> float:
    """The largest standard error of ``key`` among tasks named together (the most cautious
    interval; NaN when one of them has none)."""
    errors = [getattr(c, f"{key}_se") for c in changes if finite(getattr(c, key))]
    return max(errors) if errors and all(finite(e) for e in errors) else math.nan


def coverage(result: Result, others: Sequence[Result]) -> Finding | None:
    """Names the tasks left out of ``result``'s comparisons because a side has no score."""
    tasks: list[str] = []
    for res in (result, *others):
        tasks += [t for t in res.tasks if t not in tasks]
    missing: dict[tuple[str, ...], list[str]] = {}  # who lacks a score -> tasks
    for task in tasks:
        without = tuple(r.label for r in (result, *others) if not finite(r.tasks.get(task)))
        if without:
            missing.setdefault(without, []).append(task)
    if not missing or not _scored(result.tasks):
        return None
    parts = [f"{join_names(names)} (no score for {join_names(labels)})"
             for labels, names in missing.items()]
    return Finding("coverage", f"Left out of **{result.label}**'s task comparisons: "
                   f"{join_names(parts)}.")


# -- one sparsity level -------------------------------------------------------------------------
def sparsity_findings(results: Sequence[Result], dense: Mapping[str, Result] | Result | None,
                      reference: str | None = None,
                      datasets: Sequence[str] | None = None) -> list[Finding]:
    """Findings for the methods of one sparsity level.

    ``dense`` is the dense baseline (one for all, or one per result label, e.g. each own run's
    own comparable dense run).  ``reference`` names the result the others are compared with
    (default: the first result); with one result there is no method comparison.
    """
    out: list[Finding] = []
    datasets = list(datasets) if datasets is not None else _datasets(results, dense)
    by_label = {r.label: r for r in results}
    ref = by_label.get(reference) if reference else (results[0] if results else None)
    for result in results:
        base = dense.get(result.label) if isinstance(dense, Mapping) else dense
        if base is not None:
            out += [f for d in datasets if (f := perplexity_change(result, base, d))]
            if (f := accuracy_change(result, base, dense=True)) is not None:
                out.append(f)
    if ref is not None:
        for result in results:
            if result is ref:
                continue
            out += [f for d in datasets if (f := perplexity_change(result, ref, d))]
            if (f := accuracy_change(result, ref)) is not None:
                out.append(f)
    for result in results:
        base = dense.get(result.label) if isinstance(dense, Mapping) else dense
        if base is not None:
            out += task_extremes(result, base)
        others = [base] if base is not None else []
        if (f := coverage(result, others)) is not None:
            out.append(f)
    return out


def _datasets(results: Sequence[Result], dense: Mapping[str, Result] | Result | None
              ) -> list[str]:
    found: list[str] = []
    for res in results:
        found += [d for d in dict.fromkeys((*res.ppl, *sorted(res.collapsed))) if d not in found]
    order = ("wikitext2", "ptb", "c4")
    return sorted(found, key=lambda d: (order.index(d) if d in order else len(order), d))


# -- layer statistics ---------------------------------------------------------------------------
def _points(fraction: float) -> float:
    return fraction * 100.0


def _blocks_at(values: Mapping[int, float], shown: float) -> list[int]:
    return sorted(b for b, v in values.items() if _r(_points(v)) == shown)


def slope(values: Mapping[int, float]) -> float:
    """Least-squares slope of sparsity (points) against block index."""
    xs = sorted(values)
    mx = mean(xs)
    my = mean(_points(values[x]) for x in xs)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (_points(values[x]) - my) for x in xs) / den if den else 0.0


def _block_list(blocks: Sequence[int]) -> str:
    names = [str(b) for b in blocks]
    if len(names) > 4:
        names = [*names[:3], f"{len(blocks) - 3} more"]
    return ("block " if len(blocks) == 1 else "blocks ") + join_names(names)


def layer_findings(blocks: Mapping[int, float], target: float | None = None,
                   owl_targets: Mapping[int, float] | None = None) -> list[Finding]:
    """Findings from measured per-block sparsities (fractions by block index)."""
    values = {int(b): float(v) for b, v in blocks.items() if finite(v)}
    if not values:
        return []
    n = len(values)
    avg = mean(values.values())
    std = math.sqrt(mean((v - avg) ** 2 for v in values.values()))
    low, high = _r(_points(min(values.values()))), _r(_points(max(values.values())))
    head = f"Measured sparsity over {n} block{'s' if n > 1 else ''}: mean {pct(avg)}, " \
           f"standard deviation {fmt(_points(std))} points"
    if low == high:
        head += f", every block {fmt(low, '%')}."
    else:
        head += (f", lowest {fmt(low, '%')} ({_block_list(_blocks_at(values, low))}), highest "
                 f"{fmt(high, '%')} ({_block_list(_blocks_at(values, high))}).")
    out = [Finding("layers", head, None, _points(std))]
    out += _spread(n, _points(std), high - low, owl_targets is not None and len(owl_targets) > 0)
    if n >= 3 and _r(high - low) > 0:
        out.append(_trend(values))
    if target is not None and finite(target):
        out.append(_against_target(avg, target))
    if owl_targets:
        out += _owl(values, {int(b): float(v) for b, v in owl_targets.items() if finite(v)})
    return out


def _spread(n: int, std_points: float, range_points: float, owl: bool,
            summary: bool = False) -> list[Finding]:
    if n < 2:
        return []
    if _r(range_points) == 0:
        subject = ("The lowest and the highest block show" if summary
                   else f"All {n} blocks show")
        return [Finding("layers", f"{subject} the same sparsity: the allocation is uniform "
                        "across blocks (nothing is adapted to the blocks).", None, 0.0)]
    if _r(std_points) == 0:
        return [Finding("layers", f"The spread is negligible (standard deviation below 0.005 "
                        f"points, range {fmt(range_points)} points): the allocation is "
                        "practically uniform across blocks.", None, std_points)]
    why = " as set by the OWL block targets" if owl else ""
    return [Finding("layers", f"Sparsity differs between blocks{why}: range "
                    f"{fmt(range_points)} points, standard deviation {fmt(std_points)} points.",
                    None, std_points)]


def _trend(values: Mapping[int, float]) -> Finding:
    order = sorted(values)
    third = max(1, len(order) // 3)
    early = mean(_points(values[b]) for b in order[:third])
    late = mean(_points(values[b]) for b in order[-third:])
    s = slope(values)
    parts = (f"first third of the blocks {fmt(early, '%')}, last third {fmt(late, '%')}, "
             f"least-squares slope {_r(s):+.{DECIMALS}f} points per block")
    if _r(late - early) > 0 and s > 0:
        text = f"Sparsity rises from the early blocks to the late ones ({parts})."
    elif _r(late - early) < 0 and s < 0:
        text = f"Sparsity falls from the early blocks to the late ones ({parts})."
    else:
        text = f"No consistent trend from early to late blocks ({parts})."
    return Finding("layers", text, None, s)


def _against_target(avg: float, target: float) -> Finding:
    gap = _points(avg - target)
    t = f"{round(target * 100, 2):g}%"
    if _r(gap) == 0:
        return Finding("layers", f"The mean block sparsity equals the {t} target at two "
                       "decimals.", None, gap)
    side = "above" if gap > 0 else "below"
    return Finding("layers", f"The mean block sparsity is {fmt(abs(gap))} points {side} the "
                   f"{t} target.", None, gap)


def _owl(values: Mapping[int, float], owl: Mapping[int, float]) -> list[Finding]:
    if not owl:
        return []
    low, high = _r(_points(min(owl.values()))), _r(_points(max(owl.values())))
    out = [Finding("layers", f"OWL block targets range from {fmt(low, '%')} "
                   f"({_block_list(_blocks_at(owl, low))}) to {fmt(high, '%')} "
                   f"({_block_list(_blocks_at(owl, high))}), mean {pct(mean(owl.values()))}.")]
    shared = sorted(set(owl) & set(values))
    if shared:
        gaps = {b: _points(values[b] - owl[b]) for b in shared}
        worst = max(shared, key=lambda b: abs(gaps[b]))
        if _r(gaps[worst]) == 0:
            text = (f"Every block's measured sparsity matches its OWL target at two decimals "
                    f"({len(shared)} blocks).")
        else:
            text = (f"Measured sparsity is within {fmt(abs(gaps[worst]))} points of the OWL "
                    f"targets (largest gap at block {worst}).")
        out.append(Finding("layers", text, None, abs(gaps[worst])))
    return out


def summary_findings(summary: Mapping[str, tuple[float, int | None]],
                     target: float | None = None) -> list[Finding]:
    """Findings from a stored model summary only ('mean', 'std', 'min', 'max' -> (value, block)),
    for runs that give no per-block values (e.g. a published report).  No trend is stated."""
    got = {k: v for k, v in summary.items() if finite(v[0])}
    out: list[Finding] = []
    parts = []
    if "mean" in got:
        parts.append(f"mean {pct(got['mean'][0])}")
    if "std" in got:
        parts.append(f"standard deviation {fmt(_points(got['std'][0]))} points")
    for key, word in (("min", "lowest"), ("max", "highest")):
        if key in got:
            value, block = got[key]
            where = f" (block {int(block)})" if block is not None and finite(block) else ""
            parts.append(f"{word} {pct(value)}{where}")
    if parts:
        out.append(Finding("layers", "Block sparsity summary: " + ", ".join(parts) + "."))
    if "min" in got and "max" in got:
        spread = _points(got["max"][0] - got["min"][0])
        std = _points(got["std"][0]) if "std" in got else spread
        out += _spread(2, std, spread, owl=False, summary=True)
    if target is not None and finite(target) and "mean" in got:
        out.append(_against_target(got["mean"][0], target))
    return out
