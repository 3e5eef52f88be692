"""Activation-sparsity tables: parameter-search trials and the final comparison with CoreInfer
(seed 003), computed from the stored scores."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from core.analysis.retention import (
    percent_of,
)
from core.present.frames import (
    latest_runs,
)
from core.present.labels import (
    CONFIG_ORDER,
    NO_VALUE,
    OWN_GROUP,
    TEXT,
    Table,
    _isna,
    _isna_safe,
    _short,
    metric_label,
    params_label,
)
from core.present.tables.common import (
    _cell_text,
    _join,
    _value,
)


def search_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per search (model, task, metric, goal, group) with a label for a selector."""
    cols = ["run_id", "model", "task", "metric", "goal", "group", "label"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    runs = trials.drop_duplicates("run_id").copy()
    runs["label"] = [f"{m} · {t} · goal {_short(g)} · {grp}" for m, t, g, grp in
                     zip(runs["model"], runs["task"], runs["goal"], runs["group"], strict=True)]
    return runs[cols].reset_index(drop=True)


def search_table(trials: pd.DataFrame, run_id: int) -> Table:
    """Seed 003's search table: Params | Actual sparsity | <metric> for one search run."""
    df = trials[trials["run_id"] == run_id].sort_values("trial")
    if df.empty:
        return Table(pd.DataFrame(columns=["Params", "Actual sparsity"]))
    metric = metric_label(df["metric"].iloc[0])
    has_params = df["params"].notna().any()
    first = "Params" if has_params else "Levels"
    frame = pd.DataFrame({
        first: [params_label(p) if not _isna_safe(p) else (lbl if isinstance(lbl, str) and lbl
                                                             else str(t))
                for p, lbl, t in zip(df["params"], df["label"], df["trial"], strict=True)],
        "Actual sparsity": df["actual_sparsity"].astype(float).to_numpy(),
        metric: df["value"].astype(float).to_numpy(),
        TEXT + metric: [NO_VALUE if _isna(v) else None for v in df["value"]],
        "_trial": df["trial"].to_numpy(), "_run_id": df["run_id"].to_numpy(),
    })
    return Table(frame, {"Actual sparsity": "sparsity", metric: "auto"})


def final_rows(task_rows: pd.DataFrame, activation_rows: pd.DataFrame | None = None
               ) -> pd.DataFrame:
    """Full-dataset scores (kind 'task') whose spec names a config (CoreInfer / best / AVG), with
    the run's measured actual sparsity when stored (kind 'activation')."""
    if task_rows.empty:
        return task_rows.assign(config=[], goal=[], trial=[], actual_sparsity=[])
    df = task_rows[task_rows["kind"] == "task"].copy()
    df["config"] = [str(s.get("config", "")) for s in df["spec"]]
    df = df[df["config"] != ""]
    df["goal"] = [s.get("goal") for s in df["spec"]]
    df["trial"] = [s.get("trial") for s in df["spec"]]
    df["search"] = [s.get("search") for s in df["spec"]]  # own runs: the search they belong to
    actual: dict[int, float] = {}
    if activation_rows is not None and not activation_rows.empty:
        act = activation_rows[activation_rows["metric"] == "actual_sparsity"]
        actual = {r["run_id"]: _value(r) for r in act.to_dict("records")}
    df["actual_sparsity"] = [actual.get(r, math.nan) for r in df["run_id"]]
    return df.reset_index(drop=True)


def _final_key(rec: Mapping[str, Any]) -> tuple:
    """What a full-set score is compared within: an own search's runs only with its own
    CoreInfer run; published rows by source, model, task, metric and goal."""
    search = rec.get("search")
    return (rec["group"], rec["model"], _norm(rec["dataset"]), rec["metric"], rec["goal"],
            None if _isna_safe(search) else int(search))


def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _config_label(config: str, trial: Any) -> str:
    low = config.lower()
    if low == "best":
        return "Best" + (f" (config {_short(trial)})" if not _isna_safe(trial) else "")
    if low == "avg":
        return "AVG"
    return "CoreInfer" if low == "coreinfer" else config


def final_table(finals: pd.DataFrame, model: str | None = None, task: str | None = None,
                goal: Any = None, group: str | None = None) -> Table:
    """CoreInfer / best / AVG full-dataset scores with '% of CoreInfer' computed from them."""
    cols = ["Model", "Task", "Goal", "Config", "Actual sparsity", "Score", "% of CoreInfer",
            "Source", "Run", "Note"]
    formats = {"Goal": "score", "Actual sparsity": "sparsity", "Score": "score",
               "% of CoreInfer": "percent", "Run": "run"}
    df = _select_finals(finals, model, task, goal, group)
    if df.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    refs = _coreinfer_scores(finals)
    out = []
    for rec in df.to_dict("records"):
        score = _value(rec)
        ref = refs.get(_final_key(rec), math.nan)
        pct, why = _percent(score, ref, rec)
        out.append({
            "Model": rec["model"], "Task": rec["dataset"], "Goal": rec["goal"],
            "Config": _config_label(rec["config"], rec["trial"]),
            "Actual sparsity": rec["actual_sparsity"], "Score": score,
            TEXT + "Score": _cell_text(rec["status"], NO_VALUE),
            "% of CoreInfer": pct, TEXT + "% of CoreInfer": "" if math.isnan(pct) else None,
            "Source": rec["source_label"], "Run": rec["run_id"], "Note": _join(why, rec["note"]),
            "_config": rec["config"].lower(), "_metric": rec["metric"],
            "_search": _final_key(rec)[-1],
        })
    return Table(pd.DataFrame(out), formats)


def _select_finals(finals: pd.DataFrame, model: str | None, task: str | None, goal: Any,
                   group: str | None) -> pd.DataFrame:
    df = finals
    if df.empty:
        return df
    if model is not None:
        df = df[df["model"] == model]
    if task is not None:
        df = df[[_norm(d) == _norm(task) for d in df["dataset"]]]
    if goal is not None:
        df = df[[_same_goal(g, goal) for g in df["goal"]]]
    if group is not None:
        df = df[df["group"] == group]
    return df.assign(_order=[(_norm(d), _goal_key(g), CONFIG_ORDER.get(c.lower(), 9), r)
                             for d, g, c, r in zip(df["dataset"], df["goal"], df["config"],
                                                   df["run_id"], strict=True)]
                     ).sort_values(["model", "_order"]).drop(columns="_order")


def _goal_key(goal: Any) -> float:
    return -1.0 if _isna_safe(goal) else float(goal)


def _same_goal(a: Any, b: Any) -> bool:
    if _isna_safe(a) or _isna_safe(b):
        return _isna_safe(a) and _isna_safe(b)
    return abs(float(a) - float(b)) < 1e-9


def _coreinfer_scores(finals: pd.DataFrame) -> dict[tuple, float]:
    refs = finals[finals["config"].str.lower() == "coreinfer"]
    return {_final_key(r): _value(r) for r in latest_runs(refs, ["run_id"]).to_dict("records")}


def _percent(score: float, ref: float, rec: Mapping[str, Any]) -> tuple[float, str]:
    if rec["config"].lower() == "coreinfer":
        return (100.0, "") if not math.isnan(score) else (math.nan, "")
    if math.isnan(score):
        return math.nan, ""
    if math.isnan(ref) or not ref:
        return math.nan, "no CoreInfer score to compare with"
    return percent_of(score, ref), ""


def final_summary(finals: pd.DataFrame) -> Table:
    """One row per model, goal and task: CoreInfer, best and AVG scores and their % of CoreInfer."""
    table = final_table(finals)
    cols = ["Model", "Goal", "Task", "Metric", "CoreInfer", "Best", "Best %", "AVG", "AVG %",
            "Source"]
    formats = {"Goal": "score", "CoreInfer": "score", "Best": "score", "AVG": "score",
               "Best %": "percent", "AVG %": "percent"}
    if table.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    frame = table.frame
    out = []
    keys = ["Model", "Goal", "Task", "Source", "_search"]  # each own search is its own row
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        if not _isna_safe(row["_search"]):
            row["Source"] = f"{OWN_GROUP}: search run {int(row['_search'])}"
        row["Metric"] = metric_label(part["_metric"].iloc[0])
        for config, name in (("coreinfer", "CoreInfer"), ("best", "Best"), ("avg", "AVG")):
            cell = part[part["_config"] == config]
            found = not cell.empty
            row[name] = cell["Score"].iloc[-1] if found else math.nan
            row[TEXT + name] = cell[TEXT + "Score"].iloc[-1] if found else ""
            if name != "CoreInfer":
                row[f"{name} %"] = cell["% of CoreInfer"].iloc[-1] if found else math.nan
        out.append(row)
    frame = pd.DataFrame(out)
    hidden = [c for c in frame.columns if c.startswith(TEXT)] + ["_search"]
    return Table(frame[cols + hidden], formats,
                 ["Scores on the full dataset; % of CoreInfer is computed from the stored "
                  "scores (score / CoreInfer score)."])
