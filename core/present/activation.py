"""What the Activation sparsity page shows of own runs (no Streamlit here).

* :func:`search_finals` -- the full-set runs (CoreInfer / best / AVG) of one search, so that an
  own search is compared only with its own CoreInfer run;
* :func:`search_levels` -- per-block configured and measured kept fractions of those runs (for
  ``charts.levels_chart``);
* :func:`activation_runs_table` -- own CoreInfer / sparsity-levels runs outside a search.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from core.analysis import noise
from core.present import tables
from core.store import queries
from core.store.db import Store

CONFIG_NAMES = {"coreinfer": "CoreInfer", "best": "Best", "avg": "AVG"}


INTERVAL = "95% interval"


def _interval_text(rec: dict[str, Any]) -> str:
    """A score's 95% interval: a split perplexity's from its windows (Student's t of their mean
    NLL, exponentiated), a task score's from lm-eval's stderr; blank without either."""
    if rec.get("status") != "ok":
        return ""
    if rec["kind"] == "activation":
        nlls = rec.get("nlls")
        low, high = noise.ppl_interval(list(nlls)) if nlls is not None else (math.nan,) * 2
        return f"{low:.2f} to {high:.2f}" if math.isfinite(low) else ""
    low, high = noise.interval(tables._value(rec), rec.get("stderr"))
    if not math.isfinite(low):
        return ""
    return f"{tables.format_value(low, 'score')} to {tables.format_value(high, 'score')}"


def search_finals(finals: pd.DataFrame, run_id: int, origin: str) -> pd.DataFrame:
    """The final rows that belong to search ``run_id``: an own search's runs name it in their
    spec; published searches keep every published row (matched by model, task and goal)."""
    if finals.empty:
        return finals
    if origin != "own":
        return finals[finals["origin"] == "published"]
    mine = [isinstance(s, dict) and s.get("search") == run_id for s in finals["spec"]]
    return finals[pd.Series(mine, index=finals.index, dtype=bool)]


def search_levels(store: Store, run_id: int) -> pd.DataFrame:
    """Per block, the configured level and the measured kept fraction of each full-set run of
    an own search: columns config, block, configured, measured, run_id."""
    cols = ["config", "block", "configured", "measured", "run_id"]
    frame = queries.search_level_rows(store, run_id)
    if frame.empty:
        return pd.DataFrame(columns=cols)
    frame["trial"] = frame["trial"].fillna("")
    wide = frame.pivot(index=["run_id", "config", "trial", "block"], columns="stat",
                       values="value").reset_index()
    out = pd.DataFrame({
        "config": [_config_name(c, t) for c, t in zip(wide["config"], wide["trial"],
                                                       strict=True)],
        "block": wide["block"].astype(int),
        "configured": wide.get("configured_fraction", math.nan),
        "measured": wide.get("kept_fraction", math.nan),
        "run_id": wide["run_id"].astype(int),
        "_order": [tables.CONFIG_ORDER.get(str(c).lower(), 9) for c in wide["config"]],
    })
    return out.sort_values(["_order", "block"]).drop(columns="_order")[cols].reset_index(
        drop=True)


def _config_name(config: Any, trial: Any) -> str:
    name = CONFIG_NAMES.get(str(config).lower(), str(config))
    if name == "Best" and trial not in (None, "") and not pd.isna(trial):
        name += f" (config {trial})"
    return name


def _parameters(spec: dict[str, Any]) -> str:
    block_range = spec.get("block_range")
    blocks = (f"blocks {block_range[0]}-{block_range[1] - 1}" if block_range else "all blocks")
    if spec.get("method") == "sparsity-levels":
        levels = spec.get("levels") or []
        what = "levels " + ", ".join(f"{v:g}" for v in levels)
    else:
        what = f"kept fraction {spec.get('sparsity')}"
    return f"{what} · token sparsity {spec.get('token_sparsity')} · {blocks}"


def activation_runs_table(task_rows: pd.DataFrame, activation_rows: pd.DataFrame) -> tables.Table:
    """Own CoreInfer / sparsity-levels runs that are not part of a search: one row per run and
    task (or perplexity dataset), with the kept fraction measured on that evaluation."""
    cols = ["Run", "Model", "Method", "Parameters", "Evaluation", "Metric", "Score",
            INTERVAL, "Actual sparsity", "Note"]
    formats = {"Run": "run", "Score": "score", "Actual sparsity": "sparsity"}
    parts = [df for df in (task_rows, activation_rows) if not df.empty]
    if not parts:
        return tables.Table(pd.DataFrame(columns=cols), formats)
    rows = pd.concat(parts, ignore_index=True)
    rows = rows[(rows["origin"] == "own") & (rows["run_kind"] == "activation")]
    rows = rows[pd.Series([not s.get("config") for s in rows["spec"]], index=rows.index,
                          dtype=bool)]
    actual = {(r["run_id"], r["dataset"]): r for r in rows.to_dict("records")
              if r["kind"] == "activation" and r["metric"] == "actual_sparsity"}
    scores = rows[(rows["kind"] == "task")
                  | ((rows["kind"] == "activation") & (rows["metric"] == "ppl"))]
    out = []
    for rec in scores.sort_values(["run_id", "dataset"]).to_dict("records"):
        measured = actual.get((rec["run_id"], rec["dataset"]))
        value = tables._value(measured) if measured is not None else math.nan
        note = rec.get("note") if isinstance(rec.get("note"), str) else ""
        if measured is not None and isinstance(measured.get("note"), str):
            note = tables._join(note, measured["note"])
        out.append({
            "Run": rec["run_id"], "Model": rec["model"],
            "Method": tables.method_label(rec["method"]), "Parameters": _parameters(rec["spec"]),
            "Evaluation": rec["dataset"],
            "Metric": ("CoreInfer perplexity" if rec["kind"] == "activation"
                       else tables.metric_label(rec["metric"])),
            "Score": tables._value(rec),
            tables.TEXT + "Score": tables._cell_text(rec["status"], tables.NO_VALUE),
            INTERVAL: _interval_text(rec),
            "Actual sparsity": value,
            tables.TEXT + "Actual sparsity": "not measured" if math.isnan(value) else None,
            "Note": note,
        })
    if not out:
        return tables.Table(pd.DataFrame(columns=cols), formats)
    return tables.Table(pd.DataFrame(out), formats,
                        ["Actual sparsity: the share of FFN neurons CoreInfer computed, measured "
                         "by hooks during the sparse (decode) forwards of that evaluation, "
                         "averaged over the converted blocks; the parameters are settings, "
                         "not measurements.",
                         f"{INTERVAL}: of a perplexity, from its windows' NLLs; of a task "
                         "score, ±1.96 × lm-eval's standard error."])
