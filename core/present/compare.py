"""Compare chosen runs (own or published) side by side, with their differences (no Streamlit).

Every stored metric of the chosen runs becomes a row; each run a column; each run after the
first (the reference) gets a difference column:

* perplexity, time and memory: relative change ``(run - reference) / reference x 100`` (%),
  lower is better for perplexity and time;
* accuracy-like scores stored as fractions (zero-shot accuracy, measured sparsity): change in
  points ``(run - reference) x 100``; higher accuracy is better;
* any other number: the plain difference ``run - reference``.

A diverged value reads 'diverged', a perplexity at or above the vocabulary size 'collapsed'
and a value a run does not have '—'; none of them gets a difference.  A task scored by a
pruning run (zero-shot) and by an activation run (its task) is one row.  The spec table lists
every spec entry of the chosen runs and marks those that differ (a blank and an absent entry
are the same).  Own runs are named by their number (#12), published ones by their source and
table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import baselines, findings, noise
from core.present import tables
from core.present.tables import TEXT, Table

#: Metric kinds whose values are fractions shown as percentages and compared in points.
FRACTION_KINDS = {"zero_shot", "zero_shot_summary", "task", "sparsity", "activation"}
FRACTION_METRICS = {"acc", "acc_norm", "retention", "measured", "actual_sparsity"}
LOWER_IS_BETTER = {"perplexity", "timing"}
KIND_NAMES = {"perplexity": "Perplexity", "zero_shot": "Zero-shot", "timing": "Time",
              "memory": "Memory", "sparsity": "Sparsity", "task": "Task",
              "activation": "Activation", "perplexity_summary": "Perplexity (printed summary)",
              "zero_shot_summary": "Zero-shot (printed summary)"}
KIND_ORDER = ("perplexity", "zero_shot", "task", "activation", "sparsity", "timing", "memory")
#: Stored metric keys in words (the row names of the comparison).
METRIC_WORDS = {"prune_seconds": "pruning (s)", "eval_seconds": "evaluation (s)",
                "search_seconds": "search (s)", "peak_mb": "peak memory (MB)",
                "measured": "measured sparsity", "actual_sparsity": "actual sparsity",
                "retention": "retention"}
#: Kinds whose rows are one: a task's score from a pruning run's zero-shot evaluation and
#: from an activation or search run.
SAME_ROWS = {"task": "zero_shot"}


def run_tag(run_id: int, origin: Any, source: Any = "", table: Any = "") -> str:
    """How the comparison names a run: '#12' (own), 'Wanda README, Table 3' (published: its
    id is internal)."""
    return f"#{int(run_id)}" if origin == "own" else tables.published_name(source, table)


def run_options(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs that have results, each with a label for a picker: own runs first (latest
    first), then published ones."""
    cols = ["run_id", "label", "origin"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    df = runs[(runs["status"] == "done") & (runs["kind"] != "sweep")]
    if df.empty:
        return pd.DataFrame(columns=cols)
    own = (df["origin"] == "own").to_numpy()
    tables_of = (df["set_table"] if "set_table" in df else pd.Series(
        [tables.parse_spec(s).get("table") for s in df["spec"]], index=df.index))
    where = ["own run" if mine else tables.published_name(source, table)
             for mine, source, table in zip(own, df["source"], tables_of, strict=True)]
    variants = df["variant"] if "variant" in df else [None] * len(df)
    methods = tables.per_value(tables.run_label, df["method"], df["sparsity"], df["pattern"],
                               variants)
    ids = df["id"].astype(int).to_numpy()
    frame = pd.DataFrame({
        "run_id": ids, "origin": df["origin"].to_numpy(dtype=object),
        "label": [(f"#{i} · " if mine else "") + f"{model} · {method} · {w}"
                  for i, mine, model, method, w in
                  zip(ids, own, map(tables.short_name, df["model"]), methods, where,
                      strict=True)]}, columns=cols)
    frame["_key"] = [(not mine, -r if mine else r) for mine, r in zip(own, ids, strict=True)]
    return frame.sort_values("_key").drop(columns="_key").reset_index(drop=True)


def _is_fraction(kind: str, metric: str) -> bool:
    return kind in FRACTION_KINDS and metric in FRACTION_METRICS


def row_name(kind: str, dataset: str, metric: str) -> str:
    """'Perplexity · WT2', 'Zero-shot · piqa (Accuracy)', 'Time · pruning (s)'."""
    name = KIND_NAMES.get(kind, kind)
    if kind == "perplexity" and metric == "ppl":
        return f"{name} · {tables.dataset_label(dataset)}"
    if dataset in ("-", "", None):
        return f"{name} · {METRIC_WORDS.get(metric, tables.metric_label(metric))}"
    return f"{name} · {dataset} ({tables.metric_label(metric)})"


def _row_key(kind: str, dataset: str, metric: str) -> tuple:
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    data = (tables.DATASET_ORDER.index(dataset) if dataset in tables.DATASET_ORDER
            else len(tables.DATASET_ORDER) + tables.task_key(dataset)[0])
    return (rank, kind, data, str(dataset), metric)


def _shown(value: float, status: Any, fraction: bool, kind: str) -> str:
    if status == "diverged":
        return tables.DIVERGED
    if status == "collapsed":
        return tables.COLLAPSED
    if not findings.finite(value):
        return tables.MISSING
    if fraction:
        return tables.format_value(value, "pct")
    if kind == "perplexity":
        return tables.format_value(value, "ppl")
    if kind == "timing":
        return f"{value:.2f} s"
    if kind == "memory":
        return f"{value:.0f} MB"
    return tables.format_value(value, "score")


def difference(value: float, reference: float, kind: str, metric: str,
               se: float = math.nan, windows: tuple[Any, Any] = (None, None)
               ) -> tuple[float, str]:
    """The difference of ``value`` against ``reference`` and its text (with the verdict where a
    direction is defined; for scores with standard errors, ``se`` of the difference as a
    fraction, its 95% interval and 'within noise' when that holds 0; for perplexities with
    ``windows`` (both runs' per-window NLLs), the paired interval); NaN and '' when either is
    missing."""
    if not findings.finite(value) or not findings.finite(reference):
        return math.nan, ""
    if _is_fraction(kind, metric):
        change = (value - reference) * 100.0
        text = f"{findings.fmt(change) if findings._r(change) else '0.00'} pts"
        if findings._r(change) > 0:
            text = "+" + text
        better = kind in ("zero_shot", "zero_shot_summary", "task")
        verdict = findings.verdict_of(change, True, se * 100.0) if better else ""
        interval = noise.interval_text(change, se * 100.0, " pts") if better else ""
        if interval and findings._r(change):
            verdict = f"95% interval {interval}; {verdict}"
    elif kind in ("perplexity", "timing", "memory"):
        if reference == 0:
            return math.nan, ""
        change = findings.relative_change(value, reference)
        text = tables.format_value(change, "delta")
        verdict = (findings.verdict_of(change, higher_is_better=False)
                   if kind in LOWER_IS_BETTER else "")
        if kind == "perplexity" and all(w is not None for w in windows):
            low, high = noise.ppl_change_interval(list(windows[0]), list(windows[1]))
            if findings.finite(low) and findings._r(change):
                if noise.interval_holds_zero(low, high):
                    verdict = noise.WITHIN_NOISE
                verdict = f"95% interval {noise.percent_bounds_text(low, high)}; {verdict}"
    else:
        change = value - reference
        text = f"{change:+.4g}" if change else "0"
        verdict = ""
    return change, text + (f" ({verdict})" if verdict else "")


def _column(rec: dict[str, Any]) -> str:
    method = tables.run_label(rec["method"], rec["sparsity"], rec["pattern"], rec.get("variant"))
    what = f"{tables.short_name(rec['model'])} · {method}"
    if rec["origin"] == "own":
        return f"#{int(rec['run_id'])} {what} · own"
    return f"{what} · {tables.published_name(rec['source'], rec.get('table'))}"


def compare_table(metrics: pd.DataFrame, run_ids: Sequence[int]) -> Table:
    """Every metric of the chosen runs side by side, with differences against the first run."""
    run_ids = [int(r) for r in run_ids]
    rows = metrics[metrics["run_id"].isin(run_ids)] if not metrics.empty else metrics
    if rows.empty or not run_ids:
        return Table(pd.DataFrame(columns=["Metric"]))
    firsts = rows.drop_duplicates("run_id").to_dict("records")
    heads = {int(r["run_id"]): _column(r) for r in firsts}
    tags = {int(r["run_id"]): run_tag(r["run_id"], r["origin"], r["source"], r.get("table"))
            for r in firsts}
    present = [r for r in run_ids if r in heads]
    cells: dict[tuple, dict[int, tuple[float, Any]]] = {}
    for rec in rows.to_dict("records"):
        key = (SAME_ROWS.get(rec["kind"], rec["kind"]), str(rec["dataset"]), str(rec["metric"]))
        value = float(rec["value"]) if findings.finite(rec["value"]) else math.nan
        nlls = rec.get("nlls")
        cells.setdefault(key, {})[int(rec["run_id"])] = (
            value, rec["status"], rec.get("stderr"),
            nlls if isinstance(nlls, list | tuple | np.ndarray) else None)
    keys = sorted(cells, key=lambda k: _row_key(*k))
    frame: dict[str, list[Any]] = {"Metric": [row_name(*k) for k in keys]}
    formats: dict[str, str] = {}
    ref = present[0]
    for run in present:
        column = heads[run]
        values, texts = [], []
        for key in keys:
            value, status, _, _ = cells[key].get(run, (math.nan, "missing", None, None))
            values.append(value if status != "collapsed" else math.nan)  # shown as a word only
            texts.append(_shown(value, status, _is_fraction(key[0], key[2]), key[0]))
        frame[column], frame[TEXT + column] = values, texts
        formats[column] = "score"
        if run == ref:
            continue
        diff = f"Δ {tags[run]} vs {tags[ref]}"
        changes, notes = [], []
        for key in keys:
            mine = cells[key].get(run, (math.nan, "missing", None, None))
            base = cells[key].get(ref, (math.nan, "missing", None, None))
            change, text = difference(mine[0] if mine[1] == "ok" else math.nan,
                                      base[0] if base[1] == "ok" else math.nan, *key[::2],
                                      se=noise.combined_se(mine[2], base[2]),
                                      windows=(mine[3], base[3]))
            changes.append(change)
            notes.append(text)
        frame[diff], frame[TEXT + diff] = changes, notes
        formats[diff] = "score"
    notes = [f"Differences are against the first run ({tags[ref]}): relative change in % for "
             "perplexity, time and memory, change in points for scores stored as fractions "
             "(accuracy, sparsity), the plain difference otherwise. A score difference with "
             "standard errors on both sides gives its 95% interval; one whose interval holds 0 "
             "is within noise (neither better nor worse)."]
    if len(present) < len(run_ids):
        notes.append("Runs without any stored metric are not shown: "
                     + ", ".join(f"#{r}" for r in run_ids if r not in heads) + ".")
    return Table(pd.DataFrame(frame), formats, notes)


def _spec_text(value: Any) -> str:
    """A spec entry as the settings table shows it; blank, empty and absent are one '—'."""
    if value is None or value == "" or (isinstance(value, (dict, list)) and not value):
        return tables.MISSING
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def spec_table(runs: pd.DataFrame, run_ids: Sequence[int]) -> Table:
    """Every spec entry of the chosen runs side by side; entries that differ come first and are
    marked in the 'Differs' column."""
    run_ids = [int(r) for r in run_ids]
    df = runs[runs["id"].isin(run_ids)] if not runs.empty else runs
    if df.empty:
        return Table(pd.DataFrame(columns=["Setting"]))
    by_id = {int(r["id"]): r for r in df.to_dict("records")}
    present = [r for r in run_ids if r in by_id]
    specs = {}
    for run in present:
        rec = by_id[run]
        spec = {"model": rec["model"], "method": rec["method"],
                "sparsity": tables.sparsity_label(rec["sparsity"], rec["pattern"],
                                                  rec["method"]),
                "origin": tables.ORIGIN_NAMES.get(rec["origin"], rec["origin"])}
        if rec["origin"] == "published":
            spec["source"] = rec["source"]
        spec.update({k: v for k, v in tables.parse_spec(rec["spec"]).items()
                     if k not in ("model", "method", "sparsity", "source")})
        specs[run] = {k: _spec_text(v) for k, v in spec.items()}
    keys = list(dict.fromkeys(k for s in specs.values() for k in s))
    differs = {k: len({specs[r].get(k, tables.MISSING) for r in present}) > 1 for k in keys}
    head = ["model", "method", "sparsity", "origin", "source"]
    keys.sort(key=lambda k: (not differs[k], head.index(k) if k in head else len(head), k))
    frame: dict[str, list[Any]] = {"Setting": keys}
    for run in present:
        rec = by_id[run]
        name = run_tag(run, rec["origin"], rec["source"], specs[run].get("table"))
        frame[name if name not in frame else f"{name} ({run})"] = [
            specs[run].get(k, tables.MISSING) for k in keys]
    frame["Differs"] = ["yes" if differs[k] else "" for k in keys]
    shown = sum(differs.values())
    return Table(pd.DataFrame(frame), {}, [f"{shown} of {len(keys)} settings differ between the "
                                           "chosen runs."])


def dense_baselines(perplexity: pd.DataFrame, run_ids: Sequence[int]) -> list[int]:
    """The dense runs the chosen runs are compared with on the Perplexity page (same model,
    dataset and source; an own run's evaluated on the same windows and dtype), each once, in
    the order of the runs they serve, leaving out those already chosen."""
    chosen = {int(r) for r in run_ids}
    if perplexity.empty:
        return []
    mine = perplexity[perplexity["run_id"].isin(chosen)]
    pool = perplexity[perplexity["model"].isin(set(mine["model"]))
                      & (perplexity["dense"] | perplexity["run_id"].isin(chosen))]
    if mine.empty or pool.empty:
        return []
    pool = pool.reset_index(drop=True)
    base = baselines.perplexity_baselines(pool).to_numpy()
    found: dict[int, None] = {}
    order = {r: i for i, r in enumerate(run_ids)}
    for i in sorted(range(len(pool)), key=lambda i: order.get(int(pool["run_id"][i]), 0)):
        if int(pool["run_id"][i]) in chosen and not np.isnan(base[i]):
            dense = int(pool["run_id"][int(base[i])])
            if dense not in chosen:
                found[dense] = None
    return list(found)
