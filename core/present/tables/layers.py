"""Layer-statistics tables (seed 002): the runs that have them, sparsity by block and the model
summary of one run."""

from __future__ import annotations

import math

import pandas as pd

from core.present.frames import frame_cache, run_labels
from core.present.labels import (
    NO_VALUE,
    TEXT,
    Table,
    _isna,
    format_value,
    record_label,
    run_reference,
    sparsity_fraction,
)

LAYER_SUMMARY = (("mean", "Mean over blocks"), ("std", "Std over blocks"),
                 ("min", "Lowest block"), ("max", "Highest block"),
                 ("overall", "Overall (all prunable weights)"))


def layer_runs(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per run with layer statistics and a label for a selector: own runs first (latest
    first), then published ones."""
    cols = ["run_id", "model", "method", "sparsity", "pattern", "group", "origin", "label",
            "blocks"]
    if stats.empty:
        return pd.DataFrame(columns=cols)
    runs = stats.drop_duplicates("run_id").copy()
    if "layer" in stats:  # layer rows (else the rows of ``load_layer_runs``, counted there)
        blocks = stats[(stats["layer"] == "block") & (stats["stat"] == "sparsity")]
        counts = blocks.groupby("run_id")["block"].nunique()
        runs["blocks"] = [int(counts.get(r, 0)) for r in runs["run_id"]]
    runs["blocks"] = runs["blocks"].astype(int)
    runs["label"] = [
        f"{m} · {label} · "
        + (f"own run {r}" if o == "own" else run_reference(r, g, t))
        for m, label, o, g, r, t in zip(runs["model"], run_labels(runs), runs["origin"],
                                        runs["group"], runs["run_id"],
                                        runs["table"] if "table" in runs else [""] * len(runs),
                                        strict=True)]
    runs["_key"] = [(o != "own", -r if o == "own" else r)
                    for o, r in zip(runs["origin"], runs["run_id"], strict=True)]
    return runs.sort_values("_key")[cols].reset_index(drop=True)


def run_stats(stats: pd.DataFrame, run_id: int) -> pd.DataFrame:
    """The layer-statistics rows of one run (read only)."""
    if stats.empty:
        return stats
    return _by_run(stats).get(int(run_id), stats.iloc[0:0])


@frame_cache()
def _by_run(stats: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The rows of each run, split once for every table and chart of the runs on screen."""
    return {int(run): part for run, part in stats.groupby("run_id", sort=False)}


def block_sparsity_table(stats: pd.DataFrame, run_id: int) -> Table:
    """Measured sparsity per block of one run, its gap to the target and the least / most pruned
    linear layer of the block (own runs store every linear)."""
    cols = ["Block", "Sparsity", "Δ from target (points)", "Linears", "Least pruned linear",
            "Most pruned linear"]
    formats = {"Block": "int", "Sparsity": "pct", "Δ from target (points)": "points",
               "Linears": "int"}
    df = run_stats(stats, run_id)
    blocks = df[(df["layer"] == "block") & (df["stat"] == "sparsity")] if not df.empty else df
    if blocks.empty:
        return Table(pd.DataFrame(columns=cols), formats,
                     ["No per-block rows are stored for this run."])
    rec = df.iloc[0]
    target = sparsity_fraction(rec["sparsity"], rec["pattern"])
    linears = df[~df["layer"].isin(["block", "model"]) & (df["stat"] == "sparsity")]
    linears = linears[["block", "layer", "value"]].sort_values(["block", "value", "layer"])
    by_block = dict(list(linears.groupby("block", sort=False)))
    blocks = blocks.sort_values("block")
    out = []
    for b, value in zip(blocks["block"], blocks["value"], strict=True):
        mine = by_block.get(b, linears.iloc[0:0])
        out.append({
            "Block": int(b), "Sparsity": value,
            TEXT + "Sparsity": NO_VALUE if _isna(value) else None,
            "Δ from target (points)": (value - target) * 100 if not _isna(value) else math.nan,
            "Linears": len(mine), **_least_most(mine),
        })
    frame = pd.DataFrame(out)
    frame[TEXT + "Δ from target (points)"] = [
        None if not _isna(v) else "" for v in frame["Δ from target (points)"]]
    method = record_label(rec)
    where = run_reference(run_id, rec.get("source"), rec.get("table"))
    notes = [f"{where[0].upper() + where[1:]}: {rec['model']}, {method}; target "
             f"{target * 100:g}% of each block's prunable weights. Measured after pruning: "
             "the share of zero weights in the block's linear layers."]
    return Table(frame, formats, notes)


def _least_most(linears: pd.DataFrame) -> dict[str, str]:
    """The least and most pruned linear of a block ('all equal' when they show the same)."""
    if linears.empty:
        return {"Least pruned linear": "", "Most pruned linear": ""}
    low, high = linears.iloc[0], linears.iloc[-1]
    if format_value(low["value"], "pct") == format_value(high["value"], "pct"):
        same = f"all {format_value(low['value'], 'pct')}"
        return {"Least pruned linear": same, "Most pruned linear": same}
    return {"Least pruned linear": _linear_label(low), "Most pruned linear": _linear_label(high)}


def _linear_label(rec: pd.Series) -> str:
    return f"{rec['layer']} ({format_value(rec['value'], 'pct')})"


def layer_summary_table(stats: pd.DataFrame, run_id: int) -> Table:
    """Seed 002's model summary of one run: mean, std, lowest and highest block (with the block),
    overall.  Stored model-level rows are shown as stored; when a run has only per-block rows the
    summary is computed from them (and says so)."""
    cols = ["Statistic", "Sparsity", "Block", "Note"]
    formats = {"Sparsity": "pct", "Block": "int"}
    df = run_stats(stats, run_id)
    if df.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    model_rows = df.loc[df["layer"] == "model", [c for c in ("stat", "value", "block", "note")
                                                  if c in df]]
    stored = {r["stat"]: r for r in model_rows.to_dict("records")}
    blocks = df[(df["layer"] == "block") & (df["stat"] == "sparsity") & df["value"].notna()]
    computed = _block_summary(blocks)
    out = []
    for stat, label in LAYER_SUMMARY:
        if stat in stored:
            rec = stored[stat]
            value, block, note = rec["value"], rec["block"], rec.get("note")
        elif stat in computed:
            value, block = computed[stat]
            note = f"computed from the {len(blocks)} per-block rows"
        else:
            continue
        out.append({"Statistic": label, "Sparsity": value,
                    TEXT + "Sparsity": NO_VALUE if _isna(value) else None,
                    "Block": block if not _isna(block) else math.nan,
                    "Note": note if isinstance(note, str) else ""})
    if not out:
        return Table(pd.DataFrame(columns=cols), formats)
    frame = pd.DataFrame(out)
    notes = ["Std is the population standard deviation of the per-block sparsities."]
    if len(blocks) > 1 and blocks["value"].nunique() == 1:
        notes.append(f"All {len(blocks)} blocks have the same sparsity: the lowest and highest "
                     "block are the first one.")
    return Table(frame, formats, notes)


def _block_summary(blocks: pd.DataFrame) -> dict[str, tuple[float, float]]:
    if blocks.empty:
        return {}
    values = blocks["value"].astype(float)
    low, high = values.idxmin(), values.idxmax()
    return {"mean": (float(values.mean()), math.nan),
            "std": (float(values.std(ddof=0)), math.nan),
            "min": (float(values[low]), float(blocks.loc[low, "block"])),
            "max": (float(values[high]), float(blocks.loc[high, "block"]))}
