"""The Runs page's list as a tracking table: each run's key results as number columns, the
order chosen (over every run, before the list is cut into pages) and the method and model
filters.

No Streamlit here; ``core.present.runs`` formats the rows of a page.
"""

from __future__ import annotations

import pandas as pd

from core.present import tables
from core.present.runs import PPL_PREFIX, RETENTION, TASK_SCORE, ZERO_SHOT, is_number_column
from core.store import queries
from core.store.db import Store

NEWEST, OLDEST = "Newest first", "Oldest first"


def key_results(store: Store) -> pd.DataFrame:
    """Per own run (index: run id) its perplexity per dataset ('PPL WT2': a number,
    NaN where diverged or missing; a collapsed run's stored value), mean zero-shot accuracy
    over its scored tasks and retention against dense (as fractions), the very numbers of
    the Perplexity and Zero-shot pages; an activation or search run's mean task score."""
    ppl = queries.own_perplexities(store)
    wide = pd.DataFrame(index=pd.Index([], name="run_id"))
    if not ppl.empty:
        ppl = ppl.assign(column=[PPL_PREFIX + tables.dataset_label(d) for d in ppl["dataset"]])
        order = ppl["column"].value_counts().sort_index(kind="stable")
        order = order.sort_values(ascending=False, kind="stable").index
        wide = ppl.pivot_table(index="run_id", columns="column", values="value",
                               aggfunc="last", dropna=False)[list(order)]
    zero_shot = _zero_shot(store)
    out = wide.join(zero_shot, how="outer") if not zero_shot.empty else wide
    scores = queries.own_task_scores(store)
    if not scores.empty:
        out = out.join(pd.DataFrame({TASK_SCORE: scores["value"].to_numpy(dtype=float)},
                                    index=pd.Index(scores["run_id"].astype(int),
                                                   name="run_id")), how="outer")
    out.columns.name = None
    return out


def _zero_shot(store: Store) -> pd.DataFrame:
    """The Zero-shot page's Accuracy and Retention of each own run (index: run id)."""
    rows = tables.load_metrics(store, "zero_shot", archived=True)  # the list can show them
    own = rows[rows["origin"] == "own"] if not rows.empty else rows
    if own.empty:
        return pd.DataFrame(columns=[ZERO_SHOT, RETENTION])
    frame = tables.zero_shot_table(own).frame
    return pd.DataFrame({ZERO_SHOT: frame["Accuracy"].to_numpy(dtype=float),
                         RETENTION: frame["Retention"].to_numpy(dtype=float)},
                        index=pd.Index(frame["Run"].astype(int), name="run_id"))


def with_results(runs: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (rows of ``runs.with_status``) with the ``key_results`` columns."""
    return runs.join(results, on="Run") if not results.empty else runs


def sort_choices(runs: pd.DataFrame) -> list[str]:
    """The orders the list offers: newest / oldest first, then each number column of
    ``runs`` (of ``with_results``)."""
    numbers = [c for c in runs.columns if is_number_column(c)]
    return [NEWEST, OLDEST, *numbers]


def sort_text(choice: str) -> str:
    """How an order reads in its picker: 'PPL WT2 (lowest first)'."""
    if choice.startswith(PPL_PREFIX):
        return f"{choice} (lowest first)"
    if choice in (ZERO_SHOT, RETENTION, TASK_SCORE):
        return f"{choice} (highest first)"
    return choice


def sorted_runs(runs: pd.DataFrame, choice: str) -> pd.DataFrame:
    """``runs`` in the order ``choice`` (of ``sort_choices``): runs without the number last,
    the newest first among equal ones."""
    if choice == OLDEST:
        return runs.sort_values("Run", kind="stable")
    if choice not in runs.columns or choice == NEWEST:
        return runs.sort_values("Run", ascending=False, kind="stable")
    lowest = choice.startswith(PPL_PREFIX)
    by_run = runs.sort_values("Run", ascending=False, kind="stable")
    return by_run.sort_values(choice, ascending=lowest, na_position="last", kind="stable")


def method_choices(runs: pd.DataFrame) -> list[str]:
    """The methods of ``runs`` (raw names, shown with ``tables.method_label``)."""
    return sorted(set(runs["method"].astype(str)), key=tables.method_label)


def model_choices(runs: pd.DataFrame) -> list[str]:
    """The models of ``runs`` as the list shows them (``tables.short_name``)."""
    return sorted({tables.short_name(m) for m in runs["model"]}, key=str.casefold)


def filtered(runs: pd.DataFrame, methods: list[str] | None = None,
             models: list[str] | None = None) -> pd.DataFrame:
    """The runs of one of ``methods`` and one of ``models`` (as ``model_choices`` names
    them); an empty choice keeps all."""
    keep = pd.Series(True, index=runs.index)
    if methods:
        keep &= runs["method"].astype(str).isin(methods)
    if models:
        shown = {m: tables.short_name(m) for m in set(runs["model"])}
        keep &= runs["model"].map(shown).isin(models)
    return runs[keep]

