"""Perplexity tables: method x sparsity with the change from dense (seed 000), the dataset x
sparsity grid (seed 004) and pruning times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import baselines, noise
from core.present.frames import (
    _sort_rows,
    dedupe_published,
    latest_runs,
    object_columns,
    per_value,
    run_labels,
)
from core.present.labels import (
    BASELINE,
    COLLAPSED,
    DIVERGED,
    MISSING,
    TEXT,
    Table,
    _dataset_key,
    _method_rank,
    dataset_label,
    dataset_name,
    method_variant,
    metric_label,
    natural_key,
    shared_settings,
    sparsity_key,
)
from core.present.tables.common import (
    PPL_SETTING_KEYS,
    _cell_text,
    _join,
    _NoBaseline,
    _values,
    grid_frame,
)

PPL_INTERVAL = "PPL 95% interval"
DELTA_INTERVAL = "Δ 95% interval"
PPL_COLUMNS = ["Model", "Dataset", "Method", "PPL", PPL_INTERVAL, "Δ from dense", DELTA_INTERVAL,
               "Origin", "Source", "Run", "Settings", "Note"]
PPL_NOISE_NOTE = (f"{PPL_INTERVAL}: from the stored per-window NLLs (Student's t interval of "
                  f"their mean, exponentiated). {DELTA_INTERVAL}: paired over the same windows "
                  "as the dense run; a Δ whose interval holds 0 is within noise. Published "
                  "figures and runs stored before windows were kept have none.")


def perplexity_table(rows: pd.DataFrame, metric: str = "ppl") -> Table:
    """Seed 000's table: one row per run and dataset, PPL and the change against dense in %."""
    df = rows[(rows["kind"] == "perplexity") & (rows["metric"] == metric)] if not rows.empty \
        else rows
    if df.empty:
        return Table(pd.DataFrame(columns=PPL_COLUMNS), _ppl_formats())
    df = _sort_rows(dedupe_published(df), ["model", "dataset"]).reset_index(drop=True)
    value = _values(df)
    pos = baselines.perplexity_baselines(df).to_numpy()
    has = ~np.isnan(pos)
    take = np.where(has, pos, 0).astype(int)
    base_value = np.where(has, value[take], np.nan)
    base_run = np.where(has, df["run_id"].to_numpy()[take], np.nan)
    status, dense = df["status"].to_numpy(dtype=object), df["dense"].to_numpy(dtype=bool)
    base_status = np.where(has, status[take], None)
    computed = (status == "ok") & ~dense & ~np.isnan(value) & has & ~np.isnan(base_value)
    delta_text = np.select([status == "diverged", status == "collapsed", dense, computed],
                           [DIVERGED, COLLAPSED, BASELINE, None], default="").astype(object)
    ppl_ci, delta_ci, within = _intervals(df, np.where(has, take, -1), status == "ok", computed)
    frame = object_columns({
        "Model": df["model"].to_numpy(dtype=object),
        "Dataset": per_value(dataset_name, df["dataset"]),
        "_dataset": df["dataset"].to_numpy(dtype=object),
        "Method": run_labels(df),
        "PPL": value, TEXT + "PPL": per_value(_cell_text, status),
        PPL_INTERVAL: ppl_ci,
        "Δ from dense": np.where(computed, (value - base_value) / base_value * 100.0, np.nan),
        TEXT + "Δ from dense": delta_text, DELTA_INTERVAL: delta_ci, "_noise": within,
        "_nlls": df["nlls"].to_numpy(dtype=object) if "nlls" in df else None,
        "Origin": df["origin_label"].to_numpy(), "Source": df["source_label"].to_numpy(),
        "Run": df["run_id"].to_numpy(), "Settings": df["settings"].to_numpy(),
        "Note": _ppl_notes(df, value, has, base_value, base_run, base_status),
        "_status": status, "_baseline_run": base_run, "_method": df["method"].to_numpy(),
        "_spec": df["spec"].to_numpy(),  # hover text: charts.hover_text formats it
    })
    notes = [PPL_NOISE_NOTE] if any(ppl_ci) else []
    return Table(frame, _ppl_formats(), notes)


def _intervals(df: pd.DataFrame, bases: np.ndarray, ok: np.ndarray, computed: np.ndarray
               ) -> tuple[list[str], list[str], np.ndarray]:
    """Each row's perplexity interval and Δ interval as text, and whether Δ is within noise."""
    nlls = (df["nlls"].to_numpy(dtype=object) if "nlls" in df
            else np.full(len(df), None, dtype=object))
    stacked = noise.stack_windows(nlls)
    low, high = noise.ppl_intervals(nlls, stacked)
    ppl = [f"{lo:.2f} to {hi:.2f}" if o and lo == lo else ""
           for lo, hi, o in zip(low.tolist(), high.tolist(), ok.tolist(), strict=True)]
    d_low, d_high = noise.ppl_change_intervals(nlls, bases, stacked)
    within = computed & (d_low <= 0) & (d_high >= 0)
    delta = [(noise.percent_bounds_text(lo, hi) + (f" ({noise.WITHIN_NOISE})" if w else ""))
             if c and lo == lo else "" for lo, hi, c, w in zip(
                 d_low.tolist(), d_high.tolist(), computed.tolist(), within.tolist(),
                 strict=True)]
    return ppl, delta, within


def _ppl_notes(df: pd.DataFrame, value: np.ndarray, has: np.ndarray, base_value: np.ndarray,
               base_run: np.ndarray, base_status: np.ndarray) -> list[str]:
    """Each row's note, with why Δ is blank where it has a number but no usable baseline."""
    notes = [n if isinstance(n, str) else "" for n in df["note"].to_numpy(dtype=object)]
    asks = (~df["dense"].to_numpy(dtype=bool) & ~np.isnan(value)
            & ~(has & ~np.isnan(base_value)))
    if asks.any():
        needed = np.flatnonzero(asks | df["dense"].to_numpy(dtype=bool))
        columns = ["run_id", "model", "dataset", "metric", "group", "dense", "spec", "note"]
        records = dict(zip(needed, df[columns].iloc[needed].to_dict("records"), strict=True))
        why = _NoBaseline(list(records.values()), _base_key, PPL_SETTING_KEYS)
        for i in np.flatnonzero(asks):
            reason = (why.perplexity(records[i]) if not has[i] else
                      f"the dense baseline (run {int(base_run[i])}) "
                      f"{_no_number(base_status[i])}: Δ not computed")
            notes[i] = _join(reason, records[i].get("note"))
    return notes


def _no_number(status: object) -> str:
    """Why a dense baseline gives no number to compare with."""
    return {"diverged": "diverged", "collapsed": "collapsed (PPL at or above the vocabulary "
            "size)"}.get(str(status), "has no value")


def _ppl_formats() -> dict[str, str]:
    return {"PPL": "ppl", "Δ from dense": "delta", "Run": "run"}


def _base_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["model"], rec["dataset"], rec["metric"], rec["group"])


def sparsity_grid(rows: pd.DataFrame, model: str, group: str, table: str | None = None,
                  metric: str = "ppl") -> Table:
    """Seed 004's layout: one row per method, columns '<sparsity> · <dataset>' for one model and
    one group (a published source, or own runs); ``table`` narrows to one published table."""
    df = rows[(rows["kind"] == "perplexity") & (rows["metric"] == metric)
              & (rows["model"] == model) & (rows["group"] == group)] if not rows.empty else rows
    if table:
        df = df[df["table"] == table]
    if df.empty:
        return Table(pd.DataFrame(columns=["Method"]))
    df = df.assign(_row=grid_row_labels(df),
                   _col=[f"{s} · {dataset_label(d)}" for s, d in
                         zip(df["sparsity_label"], df["dataset"], strict=True)])
    df = latest_runs(df, ["_row", "_col"])
    col_order = _grid_columns(df)
    row_order = _grid_rows(df)
    df = df.assign(_value=_values(df), _text=per_value(_cell_text, df["status"]))
    frame, formats = grid_frame(df, row_order, col_order, "")
    notes = [f"{model} · {group}" + (f" · {table}" if table else "") +
             f" · {metric_label(metric)}; rows are the latest run of each method."]
    return Table(frame, formats, notes)


def grid_row_labels(df: pd.DataFrame) -> list[str]:
    """Method label and an own run's label words ('Wanda · OWL'); rows without label words
    (published figures) add the settings that differ between rows of their method (seed
    004's ablations: 'Wanda (alpha=0.1)')."""
    variants = (df["variant"] if "variant" in df else pd.Series([None] * len(df),
                                                                index=df.index))
    worded = variants.map(lambda v: isinstance(v, str))
    labels = pd.Series(per_value(method_variant, df["method"], variants), index=df.index,
                       dtype=object)
    plain = df[~worded.astype(bool)]
    found = {id(spec): spec for spec in plain["spec"]}  # rows of a run share a spec
    found = {key: shared_settings(spec) for key, spec in found.items()}
    for _method, part in plain.groupby("method"):
        runs = [found[id(spec)] for spec in part["spec"]]
        keys = sorted({k for f in runs for k in f})
        varying = [k for k in keys if len({f.get(k) for f in runs}) > 1]
        if not varying:
            continue
        labels[part.index] = [
            label + f" ({', '.join(f'{k}={found[id(spec)].get(k, MISSING)}' for k in varying)})"
            for label, spec in zip(labels[part.index], part["spec"], strict=True)]
    return list(labels)


def _grid_columns(df: pd.DataFrame) -> list[str]:
    keys = per_value(lambda s, p, m, d: (sparsity_key(s, p, m), _dataset_key(d)),
                     df["sparsity"], df["pattern"], df["method"], df["dataset"])
    keyed = dict(zip(df["_col"], keys, strict=True))  # the last row of each column decides
    return sorted(keyed, key=keyed.__getitem__)


def _grid_rows(df: pd.DataFrame) -> list[str]:
    keys = per_value(lambda r, m, d: (not d, _method_rank(m), natural_key(r)),
                     df["_row"], df["method"], df["dense"])
    keyed = dict(zip(df["_row"], keys, strict=True))
    return sorted(keyed, key=keyed.__getitem__)


def timing_table(rows: pd.DataFrame, metric: str = "prune_seconds") -> Table:
    """Pruning time per run (kind 'timing', metric ``metric``), seconds as stored."""
    cols = ["Model", "Method", "Time (s)", "Origin", "Source", "Run", "Settings", "Note"]
    formats = {"Time (s)": "ppl", "Run": "run"}
    df = rows[(rows["kind"] == "timing") & (rows["metric"] == metric)] if not rows.empty else rows
    if df.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    df = _sort_rows(dedupe_published(df), ["model"])
    frame = pd.DataFrame({
        "Model": df["model"].to_numpy(),
        "Method": run_labels(df),
        "Time (s)": _values(df),
        TEXT + "Time (s)": per_value(_cell_text, df["status"]),
        "Origin": df["origin_label"].to_numpy(), "Source": df["source_label"].to_numpy(),
        "Run": df["run_id"].to_numpy(), "Settings": df["settings"].to_numpy(),
        "Note": [_join(n) for n in df["note"]],
    })
    return Table(frame, formats)
