"""Zero-shot tables: average accuracy and retention per run, the per-task breakdown and the drop
from dense per task (seed 000), all computed from the stored per-task scores."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import baselines, findings, noise
from core.analysis.retention import (
    average,
    relative_change,
)
from core.present.frames import (
    _sort_rows,
    dedupe_published,
    evaluation_labels,
    frame_cache,
    latest_runs,
    object_columns,
    per_value,
    run_labels,
)
from core.present.labels import (
    DIVERGED,
    FAILED,
    FAILED_PREFIX,
    MISSING,
    NO_VALUE,
    OWN_GROUP,
    TEXT,
    Table,
    _isna,
    method_variant,
    metric_label,
    record_label,
    spec_summary,
    task_key,
)
from core.present.tables.common import (
    ZS_SETTING_KEYS,
    _join,
    _NoBaseline,
    _value,
    _values,
)

ZS_COLUMNS = ["Model", "Method", "Tasks", "Accuracy", "Accuracy 95% interval", "Retention",
              "Retention 95% interval", "Evaluation", "Origin",
              "Source", "Run", "Baseline run", "Note"]
NOT_COUNTED = ("Failed or missing tasks are marked in the per-task tables (the error in the Note "
               "column) and are not counted in averages, retention or drops.")
OWN_ZS_BASELINE = ("Own runs are compared only with a dense run of the same model evaluated with "
                   "the same few-shot count, example limit and dtype (and, where possible, the "
                   "same tasks).")


@frame_cache()
def zero_shot_scores(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """One row per run and task: ``metric``, else acc / acc_norm when the task has only that.

    A task that failed is one row with status 'missing' and a note 'task failed: ...'.
    """
    if rows.empty:
        return rows
    df = rows[rows["kind"] == "zero_shot"]
    rank = {metric: 0, "acc": 1, "acc_norm": 2}
    df = df[df["metric"].isin(rank)]
    df = df.assign(_rank=df["metric"].map(rank)).sort_values(["run_id", "_rank"])
    df = df.drop_duplicates(["run_id", "dataset"]).drop(columns="_rank")
    return _drop_repeated_runs(df)


def _drop_repeated_runs(scores: pd.DataFrame) -> pd.DataFrame:
    """Drop published runs whose every score repeats an earlier run of the same source (own
    runs are all kept, and not looked at)."""
    published = (scores["origin"] == "published").to_numpy(dtype=bool)
    if not published.any():
        return scores
    part = scores[published]
    kept = dedupe_published(part)
    if len(kept) == len(part):
        return scores
    counts = part.groupby("run_id").size()
    left = kept.groupby("run_id").size().reindex(counts.index, fill_value=0)
    partial = left[(left > 0) & (left < counts)].index
    if partial.empty:  # whole runs repeated: drop them, the rest stays as it is
        return scores.drop(index=part.index.difference(kept.index))
    return pd.concat([scores[~published], kept,
                      part[part["run_id"].isin(partial)].drop(index=kept.index,
                                                              errors="ignore")]
                     ).sort_values(["run_id"], kind="stable")


def is_failed(status: Any, note: Any) -> bool:
    """A zero-shot task that could not be evaluated (lm-eval raised): stored as 'missing'."""
    return status == "missing" and isinstance(note, str) and note.startswith(FAILED_PREFIX)


def zs_cell_text(status: Any, note: Any) -> str | None:
    """The word shown instead of a score: 'failed', 'no value', 'diverged' (None: a number)."""
    if status == "diverged":
        return DIVERGED
    if is_failed(status, note):
        return FAILED
    if status != "ok":
        return NO_VALUE
    return None


def zs_evaluations(rows: pd.DataFrame, model: str | None = None) -> list[str]:
    """The distinct zero-shot settings of own runs (of ``model``), most used first."""
    df = rows[(rows["group"] == OWN_GROUP) & (rows["kind"] == "zero_shot")] if not rows.empty \
        else rows
    if model is not None and not df.empty:
        df = df[df["model"] == model]
    if df.empty:
        return []
    labels = evaluation_labels(df.drop_duplicates("run_id")).reset_index(drop=True)
    labels = labels[labels != ""]
    return list(labels.value_counts(sort=True).index)


@dataclass
class _RunScores:
    """Per run of a zero-shot table (positions of ``runs``, one row per run): the tasks it
    attempted and scored, its average accuracy and that average's standard error, all from
    the per-task ``scores`` in one pass (no Python loop over rows)."""

    attempted: np.ndarray  # tasks attempted
    scored: np.ndarray  # tasks with an 'ok' score
    accuracy: np.ndarray  # mean of the 'ok' scores (NaN: none)
    accuracy_se: np.ndarray  # its standard error (NaN: a score without one, or none)
    #: The 'ok' scores: run position, task, value, standard error (in the scores' order).
    ok: pd.DataFrame

    @classmethod
    def of(cls, scores: pd.DataFrame, runs: pd.DataFrame) -> _RunScores:
        position = pd.Index(runs["run_id"]).get_indexer(scores["run_id"])
        n = len(runs)
        value = _values(scores)
        se = (scores["stderr"].to_numpy(dtype=float, na_value=np.nan) if "stderr" in scores
              else np.full(len(scores), np.nan))
        keep = ~np.isnan(value)
        ok = pd.DataFrame({"pos": position[keep],
                           "task": scores["dataset"].to_numpy(dtype=object)[keep],
                           "value": value[keep], "se": se[keep]})
        scored = np.bincount(ok["pos"], minlength=n)
        accuracy = _mean(ok["pos"], ok["value"], scored, n)
        return cls(np.bincount(position, minlength=n), scored, accuracy,
                   _mean_se(ok["pos"], ok["se"], scored, n), ok)


def _mean(groups: pd.Series, values: pd.Series, counts: np.ndarray, n: int) -> np.ndarray:
    """Each group's mean of ``values`` (summed in row order, as ``average`` does); NaN for an
    empty group."""
    total = np.bincount(groups, weights=values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _mean_se(groups: pd.Series, errors: pd.Series, counts: np.ndarray, n: int) -> np.ndarray:
    """Each group's ``noise.mean_se``: sqrt(sum se^2) / count, NaN when one is not finite."""
    se = errors.to_numpy(dtype=float)
    bad = np.bincount(groups, weights=~np.isfinite(se), minlength=n) > 0
    total = np.bincount(groups, weights=np.where(np.isfinite(se), se * se, 0.0), minlength=n)
    return np.where(~bad & (counts > 0), np.sqrt(total) / np.maximum(counts, 1), np.nan)


@dataclass
class _Retention:
    """Per run: retention against its dense baseline over the tasks both scored, how many
    tasks that used, and the two averages' standard errors over those tasks."""

    value: np.ndarray
    used: np.ndarray
    dense: np.ndarray  # the baseline's average over the shared tasks
    se: np.ndarray  # the run's average's standard error over them
    dense_se: np.ndarray

    @classmethod
    def of(cls, runs: _RunScores, base_pos: np.ndarray) -> _Retention:
        """``base_pos``: each run's baseline position (-1: none)."""
        n = len(base_pos)
        mine = runs.ok.assign(base=base_pos[runs.ok["pos"].to_numpy()])
        mine = mine[mine["base"] >= 0]
        pairs = mine.merge(runs.ok.rename(columns={"pos": "base", "value": "dense_value",
                                                   "se": "dense_se"}), on=["base", "task"])
        pairs = pairs.sort_values(["pos", "task"], kind="stable")  # ``retention``'s order
        used = np.bincount(pairs["pos"], minlength=n)
        run_avg = _mean(pairs["pos"], pairs["value"], used, n)
        dense = _mean(pairs["pos"], pairs["dense_value"], used, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where((used > 0) & (dense != 0), run_avg / dense, np.nan)
        return cls(value, used, dense, _mean_se(pairs["pos"], pairs["se"], used, n),
                   _mean_se(pairs["pos"], pairs["dense_se"], used, n))


_NO_BASE_COLUMNS = ["run_id", "model", "group", "dense", "spec"]


def _zs_baselines(scores: pd.DataFrame, runs: pd.DataFrame) -> tuple[dict[int, int], _NoBaseline]:
    """Each run's dense baseline run (``baselines.zero_shot_baselines``) and, for the runs
    without one, why."""
    dense = runs[runs["dense"].astype(bool)].drop_duplicates("run_id")
    return (baselines.zero_shot_baselines(scores, runs),
            _NoBaseline(dense[_NO_BASE_COLUMNS].to_dict("records"),
                        lambda r: (r["model"], r["group"]), ZS_SETTING_KEYS))


def zero_shot_table(rows: pd.DataFrame, metric: str = "acc") -> Table:
    """Average accuracy over each run's scored tasks and retention = average / dense average
    (same model and group, same evaluation settings for own runs, over the tasks both have)."""
    scores = zero_shot_scores(rows, metric)
    formats = {"Accuracy": "pct", "Retention": "pct", "Tasks": "int", "Run": "run",
               "Baseline run": "run"}
    if scores.empty:
        return Table(pd.DataFrame(columns=ZS_COLUMNS), formats)
    runs_frame = _sort_rows(scores.drop_duplicates("run_id"), ["model"]).reset_index(drop=True)
    runs = _RunScores.of(scores, runs_frame)
    chosen, why = _zs_baselines(scores, runs_frame)
    run_ids = runs_frame["run_id"].to_numpy()
    base_pos = pd.Index(run_ids).get_indexer(  # -1 where there is none
        [chosen.get(int(r), math.nan) for r in run_ids])
    base_run = np.where(base_pos >= 0, run_ids[base_pos], np.nan)
    kept = _Retention.of(runs, base_pos)
    frame = object_columns({
        "Model": runs_frame["model"].to_numpy(dtype=object),
        "Method": run_labels(runs_frame), "Tasks": runs.scored, "Accuracy": runs.accuracy,
        TEXT + "Accuracy": np.where(runs.scored > 0, None, MISSING).astype(object),
        ACC_INTERVAL: _percent_intervals(runs.accuracy, runs.accuracy_se)[0],
        "Retention": kept.value,
        TEXT + "Retention": np.where(np.isnan(kept.value), "", None).astype(object),
        RETENTION_INTERVAL: _retention_intervals(kept, run_ids, base_run),
        "Evaluation": list(evaluation_labels(runs_frame)),
        "Origin": runs_frame["origin_label"].to_numpy(dtype=object),
        "Source": runs_frame["source_label"].to_numpy(dtype=object), "Run": run_ids,
        "Baseline run": base_run,
        "Note": _zs_notes(scores, runs_frame, runs, kept, base_run, base_pos, why),
        "_method": runs_frame["method"].to_numpy(dtype=object),
        "_spec": runs_frame["spec"].to_numpy(dtype=object)})
    notes = [_task_note(scores, metric), NOT_COUNTED]
    if (runs_frame["group"] == OWN_GROUP).any():
        notes.append(OWN_ZS_BASELINE)
    if (frame[ACC_INTERVAL] != "").any():
        notes.append(ZS_NOISE_NOTE)
    return Table(frame, formats, notes)


def _zs_notes(scores: pd.DataFrame, runs_frame: pd.DataFrame, runs: _RunScores,
              kept: _Retention, base_run: np.ndarray, base_pos: np.ndarray,
              why: _NoBaseline) -> list[str]:
    """Each run's note: tasks not counted, why it has no baseline, or the tasks retention
    used when fewer than either run scored."""
    failed = _failed_tasks(scores)
    records = runs_frame[_NO_BASE_COLUMNS]
    out = []
    for i, (run, attempted, scored) in enumerate(zip(
            runs_frame["run_id"].tolist(), runs.attempted.tolist(), runs.scored.tolist(),
            strict=True)):
        notes = []
        if scored < attempted:
            notes.append(_not_counted(scored, attempted, failed.get(run, [])))
        if base_pos[i] < 0:
            notes.append(why.zero_shot(records.iloc[i].to_dict()))
        elif scored and kept.used[i] < max(scored, runs.scored[base_pos[i]]):
            notes.append(f"retention over the {kept.used[i]} tasks shared with dense run "
                         f"{int(base_run[i])}")
        out.append(_join(*notes))
    return out


def _failed_tasks(scores: pd.DataFrame) -> dict[int, list[str]]:
    """The tasks each run failed (lm-eval raised), in task order."""
    missing = np.flatnonzero((scores["status"] == "missing").to_numpy(dtype=bool))
    notes = scores["note"].to_numpy(dtype=object)[missing].tolist()
    failed = scores.iloc[missing[[is_failed("missing", n) for n in notes]]]
    return failed.groupby("run_id")["dataset"].agg(lambda t: sorted(t, key=task_key)).to_dict()


def _not_counted(scored: int, attempted: int, failed: list[str]) -> str:
    detail = f"{', '.join(failed)} failed" if failed else "others have no value"
    if failed and len(failed) < attempted - scored:
        detail += ", others have no value"
    return f"average over {scored} of {attempted} tasks ({detail}; not counted)"


ACC_INTERVAL = "Accuracy 95% interval"
RETENTION_INTERVAL = "Retention 95% interval"
ZS_NOISE_NOTE = (f"{ACC_INTERVAL}: from lm-eval's standard errors of the tasks averaged. "
                 f"{RETENTION_INTERVAL}: delta method over the tasks shared with dense, both "
                 "averages taken as independent (cautious); one that holds 100% is within "
                 "noise. Published figures give no standard errors.")


def _percent_intervals(values: np.ndarray, ses: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each value's 95% interval as '63.10% to 65.20%' ('' without one) and whether it holds
    100% (``values`` are fractions; for a retention, within noise)."""
    low, high = noise.intervals(values, ses)
    texts = [f"{lo * 100:.2f}% to {hi * 100:.2f}%" if lo == lo else ""
             for lo, hi in zip(low.tolist(), high.tolist(), strict=True)]
    return texts, noise.holds_zero(low - 1.0, high - 1.0)


def _retention_intervals(kept: _Retention, run_ids: np.ndarray, base_run: np.ndarray
                         ) -> list[str]:
    """Each run's retention 95% interval text, marked within noise when it holds 100% (none
    for a dense run, its own baseline: its retention is 100% exactly)."""
    shown = (kept.used > 0) & ~np.isnan(base_run) & (base_run != run_ids) & ~np.isnan(kept.value)
    se = noise.ratio_ses(kept.value * kept.dense, kept.se, kept.dense, kept.dense_se)
    texts, within = _percent_intervals(np.where(shown, kept.value, np.nan), se)
    return [f"{t} ({noise.WITHIN_NOISE})" if t and w else t
            for t, w in zip(texts, within.tolist(), strict=True)]


def _task_note(scores: pd.DataFrame, metric: str) -> str:
    tasks = sorted(set(scores["dataset"]), key=task_key)
    ok = (scores["status"] == "ok").to_numpy(dtype=bool) & scores["value"].notna().to_numpy()
    scored = sorted(set(scores["dataset"].to_numpy(dtype=object)[ok].tolist()), key=task_key)
    note = (f"Average across {len(scored)} tasks: {', '.join(scored)} ({metric_label(metric)}; "
            "computed from the per-task scores).")
    unscored = [t for t in tasks if t not in scored]
    if unscored:
        note += f" No run shown has a score for {', '.join(unscored)}."
    return note


LONG_EXTRA = ["column", "role", "baseline_run", "baseline_note"]


@frame_cache()
def per_task_long(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
                  groups: Iterable[str] | None = None, evaluation: str | None = None
                  ) -> pd.DataFrame:
    """Per-task scores of one model at one sparsity label and of their dense baselines.

    Own runs: the latest run of each method (whole runs, never mixed), restricted to the
    zero-shot settings ``evaluation`` when given, each with the dense run
    ``baselines.zero_shot_baselines`` picks.
    Published: the latest score per method, group and task, and the group's dense scores.
    Adds 'column' (the per-task table's column label), 'role' ('dense' / 'pruned') and, on pruned
    rows, 'baseline_run' (the dense run compared with; NaN when none) and 'baseline_note'.
    """
    scores = zero_shot_scores(rows, metric)
    if scores.empty:
        return scores.assign(**{c: [] for c in LONG_EXTRA})
    df = _model_scores(scores, model, tuple(groups) if groups is not None else None,
                       evaluation)
    pruned = df[~df["dense"].astype(bool) & (df["sparsity_label"] == sparsity)]
    if pruned.empty:
        return df.iloc[0:0].assign(**{c: [] for c in LONG_EXTRA})
    parts: list[pd.DataFrame] = []
    hidden = 0  # own methods and variants left out (over MAX_OWN_COLUMNS)
    for group, gpruned in pruned.groupby("group", sort=False):
        gdense = df[df["dense"].astype(bool) & (df["group"] == group)]
        if group == OWN_GROUP:
            parts += _own_per_task(gpruned, gdense, df)
            hidden = max(0, own_variant_count(gpruned) - MAX_OWN_COLUMNS)
        else:
            parts += _published_per_task(gpruned, gdense)
    long = _sort_rows(pd.concat(parts, ignore_index=True), [])
    several = long["group"].nunique() > 1
    own_dense = long[(long["role"] == "dense") & (long["group"] == OWN_GROUP)]
    several_dense = own_dense["run_id"].nunique() > 1
    variants = long["variant"] if "variant" in long else [None] * len(long)
    long["column"] = per_value(
        lambda method, variant, role, group, run: _column_label(
            method, variant, role == "dense" and group == OWN_GROUP and several_dense,
            run, group if several else None),
        long["method"], variants, long["role"], long["group"], long["run_id"])
    long = long.reset_index(drop=True)
    long.attrs[HIDDEN] = hidden
    return long


@frame_cache()
def _model_scores(scores: pd.DataFrame, model: str, groups: tuple[str, ...] | None,
                  evaluation: str | None) -> pd.DataFrame:
    """The per-task scores of ``model`` (in ``groups``; own runs of the zero-shot settings
    ``evaluation`` only, when given), one frame for every sparsity of a report."""
    df = scores[scores["model"] == model]
    if groups is not None:
        df = df[df["group"].isin(list(groups))]
    if evaluation is not None:
        df = df[(df["group"] != OWN_GROUP)
                | pd.Series(evaluation_labels(df).to_numpy() == evaluation,
                            index=df.index, dtype=bool)]
    return df


@frame_cache()
def _own_baselines(scores: pd.DataFrame) -> tuple[dict[int, int], _NoBaseline]:
    """``_zs_baselines`` of every own run of one model's per-task ``scores``: a run's
    baseline depends on its own settings and tasks and on the dense runs only, so one query
    serves every sparsity."""
    own = scores[scores["group"] == OWN_GROUP].drop_duplicates("run_id")
    return _zs_baselines(scores, own)


#: The per-task views show the latest run of each method and variant, up to this many (the
#: newest); the page's filters narrow the choice.
MAX_OWN_COLUMNS = 12


HIDDEN = "own variants hidden"  # per_task_long's attrs key: how many were left out


def own_variant_count(own: pd.DataFrame) -> int:
    """How many methods and variants the own per-task scores ``own`` hold."""
    return len(_with_variant_key(own).drop_duplicates(["method", "_variant"]))


def _with_variant_key(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with ``_variant``: the run's label words ('' without), to group by."""
    return scores.assign(_variant=scores["variant"].fillna("") if "variant" in scores else "")


def hidden_note(long: pd.DataFrame) -> list[str]:
    """A note when ``per_task_long`` left own methods or variants out."""
    hidden = long.attrs.get(HIDDEN, 0)
    return [f"Own runs: the {MAX_OWN_COLUMNS} newest methods and variants are shown, {hidden} "
            "more are not; narrow the choice with the sidebar's filters."] if hidden else []


def _own_per_task(pruned: pd.DataFrame, dense: pd.DataFrame, scores: pd.DataFrame
                  ) -> list[pd.DataFrame]:
    """The latest pruned run of each method and variant (the ``MAX_OWN_COLUMNS`` newest) with
    its dense baseline run, chosen from the per-task ``scores`` of the model."""
    latest = _with_variant_key(pruned).groupby(["method", "_variant"])["run_id"].max()
    newest = latest.sort_values(ascending=False).iloc[:MAX_OWN_COLUMNS]
    chosen = pruned[pruned["run_id"].isin(newest)]
    found, why = _own_baselines(scores)
    codes, runs = pd.factorize(chosen["run_id"])  # rows grouped by run, runs in first-seen order
    chosen = chosen.iloc[np.argsort(codes, kind="stable")]
    base_of = {int(r): found.get(int(r)) for r in runs}
    firsts = chosen.drop_duplicates("run_id")
    why_not = {int(rec["run_id"]): why.zero_shot(rec) for rec in
               firsts[[base_of[int(r)] is None for r in firsts["run_id"]]].to_dict("records")}
    row_bases = [base_of[r] for r in chosen["run_id"].tolist()]
    parts = [chosen.assign(
        role="pruned",
        baseline_run=np.array([math.nan if b is None else b for b in row_bases],
                              dtype=float if None in row_bases else np.int64),
        baseline_note=[why_not.get(r, "") for r in chosen["run_id"].tolist()])]
    bases = list(dict.fromkeys(b for b in base_of.values() if b is not None))
    if bases:
        rank = {b: i for i, b in enumerate(bases)}
        used = dense[dense["run_id"].isin(bases)]
        used = used.iloc[np.argsort([rank[r] for r in used["run_id"].tolist()], kind="stable")]
        parts.append(used.assign(role="dense", baseline_run=used["run_id"].to_numpy(),
                                 baseline_note=""))
    return parts


def _published_per_task(pruned: pd.DataFrame, dense: pd.DataFrame) -> list[pd.DataFrame]:
    chosen = latest_runs(pruned, ["method", "sparsity_label", "group", "dataset"])
    base = latest_runs(dense, ["dataset"])
    by_task = dict(zip(base["dataset"], base["run_id"], strict=True))
    group = chosen["group"].iloc[0]
    return [chosen.assign(role="pruned",
                          baseline_run=[by_task.get(t, math.nan) for t in chosen["dataset"]],
                          baseline_note=["" if t in by_task else
                                         f"no dense score for {t} in {group}"
                                         for t in chosen["dataset"]]),
            base.assign(role="dense", baseline_run=base["run_id"], baseline_note="")]


def _column_label(method: str, variant: str | None, name_run: bool, run: int,
                  group: str | None) -> str:
    """A per-task column's label: the method and variant, the run where several own dense
    runs are columns, the group where several groups are."""
    label = method_variant(method, variant)
    if name_run:
        label += f" (run {run})"
    return label + (f" ({group})" if group is not None else "")


def per_task_table(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
                   groups: Iterable[str] | None = None, evaluation: str | None = None) -> Table:
    """Seed 000's per-task breakdown: rows = task, columns = Dense and each method; a failed task
    reads 'failed' with lm-eval's error in the Note column."""
    long = per_task_long(rows, model, sparsity, metric, groups, evaluation)
    if long.empty:
        return Table(pd.DataFrame(columns=["Task"]))
    columns = list(dict.fromkeys(long["column"]))
    tasks = sorted(set(long["dataset"]), key=task_key)
    cell_columns = ["column", "dataset", "status", "value", "stderr", "note", "origin"]
    cells = {(r["column"], r["dataset"]): r for r in  # the last row of each column and task
             long[[c for c in cell_columns if c in long]].to_dict("records")}
    frame: dict[str, list[Any]] = {"Task": tasks}
    notes: dict[str, dict[str, list[str]]] = {t: {} for t in tasks}  # task -> note -> columns
    formats = {}
    for col in columns:
        found = [cells.get((col, t)) for t in tasks]
        frame[col] = [_value(c) if c is not None else math.nan for c in found]
        frame[TEXT + col] = [zs_cell_text(c["status"], c["note"]) if c is not None
                             else NO_VALUE for c in found]
        formats[col] = "pct"
        errors = [score_stderr(c) if c is not None else math.nan for c in found]
        if not all(math.isnan(e) for e in errors):  # lm-eval's standard error, beside it
            frame[col + SE_SUFFIX], formats[col + SE_SUFFIX] = errors, "pct"
        for t, c in zip(tasks, found, strict=True):
            note = _row_note(c) if c is not None else ""
            if note:
                notes[t].setdefault(note, []).append(col)
    frame["Note"] = [_join(*(f"{', '.join(cols)}: {note}" for note, cols in notes[t].items()))
                     for t in tasks]
    table_notes = [f"{model}, {sparsity} sparsity, {metric_label(metric)} per task.",
                   NOT_COUNTED, *hidden_note(long)]
    if any(c.endswith(SE_SUFFIX) for c in frame):
        table_notes.append(f"{SE_SUFFIX.strip()}: lm-eval's standard error of the score (a 95% "
                     "interval is about ±1.96 SE; the drop table gives each drop's interval).")
    return Table(pd.DataFrame(frame), formats, table_notes)


#: Suffix of a per-task column holding the standard error of the scores of the column before it.
SE_SUFFIX = " SE"


def score_stderr(rec: Mapping[str, Any]) -> float:
    """A score's standard error (NaN when it has none or is no 'ok' number)."""
    se = rec.get("stderr")
    ok = rec.get("status", "ok") == "ok" and findings.finite(se)
    return float(se) if ok else math.nan


def _row_note(rec: Mapping[str, Any]) -> str:
    """A score's note worth showing: a failure, a missing value, or a published remark (own
    runs' 'lm-eval <version>' provenance is left out)."""
    note = rec.get("note")
    if not isinstance(note, str) or not note:
        return ""
    if rec.get("status") != "ok" or rec.get("origin") == "published":
        return note
    return ""


INTERVAL = "95% interval (points)"
DROP_COLUMNS = ["Task", "Method", "Score", "Dense", "Drop (points)", INTERVAL, "Relative drop",
                "Source", "Run", "Baseline run", "Note"]
DROP_NOISE_NOTE = (f"{INTERVAL}: drop ± 1.96 standard errors, from lm-eval's standard errors of "
                   "both scores taken as independent (cautious: both are scored on the same "
                   "examples); a drop whose interval holds 0 is within noise. Published figures "
                   "give no standard errors.")
AVERAGE_ROW = "Average"


def drop_table(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
               groups: Iterable[str] | None = None, evaluation: str | None = None) -> Table:
    """Per-task drop from dense: for each task and method the score, the drop in points
    ((pruned - dense) x 100) and the relative drop in % ((pruned - dense) / dense x 100), sign kept
    (negative = worse); then each method's average over the tasks it shares with dense."""
    formats = {"Score": "pct", "Dense": "pct", "Drop (points)": "points",
               "Relative drop": "delta", "Run": "run", "Baseline run": "run"}
    long = per_task_long(rows, model, sparsity, metric, groups, evaluation)
    if long.empty:
        return Table(pd.DataFrame(columns=DROP_COLUMNS), formats)
    records = long.to_dict("records")
    dense_cells = {(r["run_id"], r["dataset"]): r for r in records if r["role"] == "dense"}
    columns: dict[str, list[dict[str, Any]]] = {}  # pruned rows by column, first seen first
    for rec in records:
        if rec["role"] == "pruned":
            columns.setdefault(rec["column"], []).append(rec)
    out = []
    for column, part in columns.items():
        first = part[0]
        by_task = {r["dataset"]: r for r in part}
        bases = {t: r["baseline_run"] for t, r in by_task.items()}
        if first["group"] == OWN_GROUP and not _isna(first["baseline_run"]):
            base_tasks = {t for (rid, t) in dense_cells if rid == first["baseline_run"]}
            bases.update({t: first["baseline_run"] for t in base_tasks})
        tasks = sorted(set(by_task) | {t for t, b in bases.items() if not _isna(b)}, key=task_key)
        pairs = []
        for task in tasks:
            rec = by_task.get(task)
            base = dense_cells.get((bases.get(task), task))
            out.append(_drop_record(task, column, first, rec, base))
            if rec is not None and base is not None:
                pairs.append((_value(rec), _value(base), _pair_se(rec, base)))
        out.append(_drop_average(column, first, pairs, len(tasks)))
    frame = pd.DataFrame(out)
    order = {t: i for i, t in enumerate(sorted(set(frame["Task"]) - {AVERAGE_ROW},
                                               key=task_key))}
    order[AVERAGE_ROW] = len(order)
    frame = frame.assign(_order=frame["Task"].map(order)).sort_values(
        "_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    notes = [f"{model}, {sparsity} sparsity, {metric_label(metric)}. Drop = pruned − dense in "
             "percentage points; relative drop = (pruned − dense) / dense × 100; negative = "
             "worse than dense.",
             "Average rows: over the tasks both the run and its dense baseline scored; their "
             "relative drop equals retention − 100%.", DROP_NOISE_NOTE, NOT_COUNTED,
             *hidden_note(long)]
    if any(r["group"] == OWN_GROUP for part in columns.values() for r in part):
        notes.append(OWN_ZS_BASELINE)
    return Table(frame, formats, notes)


def _drop_record(task: str, column: str, first: Mapping[str, Any], rec: Mapping[str, Any] | None,
                 base: Mapping[str, Any] | None) -> dict[str, Any]:
    score = _value(rec) if rec is not None else math.nan
    dense = _value(base) if base is not None else math.nan
    notes = []
    if rec is None:
        score_text = NO_VALUE
        notes.append(f"run {first['run_id']} did not evaluate {task}")
    else:
        score_text = zs_cell_text(rec["status"], rec["note"])
        notes.append(_row_note(rec))
    if base is not None:
        dense_text = zs_cell_text(base["status"], base["note"])
        if dense_text is not None:
            same = rec is not None and _row_note(base) == _row_note(rec)
            notes.append(f"dense {dense_text} too" if same
                         else f"dense: {_row_note(base) or dense_text}")
    else:
        dense_text = NO_VALUE
        if first["group"] != OWN_GROUP:
            notes.append(f"no dense score for {task} in {first['group']}")
        elif _isna(first["baseline_run"]):
            notes.append("no comparable dense run (see the Average row)")
        else:
            notes.append(f"dense run {int(first['baseline_run'])} did not evaluate {task}")
    drop, rel = _drops(score, dense)
    se = _pair_se(rec, base) if rec is not None and base is not None else math.nan
    return {
        "Task": task, "Method": column_method(first, column), "Score": score,
        TEXT + "Score": score_text, "Dense": dense, TEXT + "Dense": dense_text,
        "Drop (points)": drop, TEXT + "Drop (points)": None if not math.isnan(drop) else "",
        INTERVAL: interval_cell(drop, se), "_noise": noise.within_noise(drop, se),
        "Relative drop": rel, TEXT + "Relative drop": None if not math.isnan(rel) else "",
        "Source": first["source_label"],
        "Run": rec["run_id"] if rec is not None else first["run_id"],
        "Baseline run": base["run_id"] if base is not None else math.nan,
        "Note": _join(*notes), "_column": column, "_method": first["method"],
        "_average": False, "_spec": spec_summary((rec or first)["spec"]),
    }


def column_method(first: Mapping[str, Any], column: str) -> str:
    """'Wanda 50%', plus the group when the column label names one."""
    label = record_label(first)
    suffix = column[len(method_variant(first["method"], first.get("variant"))):]
    return label + suffix


def _drops(score: float, dense: float) -> tuple[float, float]:
    if math.isnan(score) or math.isnan(dense):
        return math.nan, math.nan
    drop = (score - dense) * 100.0
    return drop, relative_change(score, dense) if dense else math.nan


def _pair_se(rec: Mapping[str, Any], base: Mapping[str, Any]) -> float:
    """The standard error (points) of a score's drop from its dense score; NaN when either
    score is no 'ok' number or has no standard error."""
    if rec.get("status") != "ok" or base.get("status") != "ok":
        return math.nan
    return noise.combined_se(rec.get("stderr"), base.get("stderr")) * 100.0


def interval_cell(drop: float, se: float) -> str:
    """'-3.10 to +0.92', with '(within noise)' when it holds 0; '' without an interval."""
    text = noise.interval_text(drop, se)
    if text and noise.within_noise(drop, se):
        text += f" ({noise.WITHIN_NOISE})"
    return text


def _drop_average(column: str, first: Mapping[str, Any],
                  pairs: list[tuple[float, float, float]], n_tasks: int) -> dict[str, Any]:
    used = [(s, d, e) for s, d, e in pairs if not math.isnan(s) and not math.isnan(d)]
    score = average(s for s, _, _ in used)
    dense = average(d for _, d, _ in used)
    drop, rel = _drops(score, dense)
    se = noise.mean_se(e for _, _, e in used)
    note = (f"over the {len(used)} of {n_tasks} tasks scored by both" if used
            else "no task scored by both the run and dense")
    if first["group"] == OWN_GROUP and _isna(first["baseline_run"]):
        note = first["baseline_note"]
    return {
        "Task": AVERAGE_ROW, "Method": column_method(first, column), "Score": score,
        TEXT + "Score": None if used else NO_VALUE, "Dense": dense,
        TEXT + "Dense": None if used else NO_VALUE,
        "Drop (points)": drop, TEXT + "Drop (points)": None if not math.isnan(drop) else "",
        INTERVAL: interval_cell(drop, se), "_noise": noise.within_noise(drop, se),
        "Relative drop": rel, TEXT + "Relative drop": None if not math.isnan(rel) else "",
        "Source": first["source_label"], "Run": first["run_id"],
        "Baseline run": first["baseline_run"] if first["group"] == OWN_GROUP else math.nan,
        "Note": note, "_column": column, "_method": first["method"], "_average": True,
        "_spec": spec_summary(first["spec"]),
    }
