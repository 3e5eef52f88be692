"""Compute cost and hyperparameter ablations: seed 004's Table 3 (time) and Table 4 (grid) layouts.

* :func:`compute_time_grid` -- method x (model, sparsity) pruning seconds, as seed 004 Table 3.
* :func:`run_costs` -- every own run's pruning time, evaluation time, peak memory and device.
* :func:`ablation_list` / :func:`ablation_cells` -- own sweeps (``core.sweep``) and published
  two-parameter grids (rows whose settings vary in two parameters, e.g. 004 Table 4) as one list.
* :func:`ablation_table` -- the grid as seed 004 Table 4 lays it out, the best cell marked.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.present import tables
from core.present.tables.common import grid_frame
from core.store import queries
from core.store.db import Store

BEST = "best"
#: Perplexity statuses a cell shows as a word, never as a number (nor as the best cell).
_NO_NUMBER = ("diverged", "collapsed")
RUN = "_run:"  # prefix of the hidden column holding the run of each grid cell


# -- compute time (seed 004 Table 3) ------------------------------------------------------------
def _time_cells(rows: pd.DataFrame, group: str, metric: str) -> pd.DataFrame:
    """The timing rows of one group, pruned runs only, the latest run per method row ('_row')
    and '<model> · <sparsity>' column ('_col'); '_key' orders the columns."""
    df = rows[(rows["kind"] == "timing") & (rows["metric"] == metric)
              & (rows["group"] == group) & ~rows["dense"]] if not rows.empty else rows
    if df.empty:
        return df
    df = df.assign(_row=tables.grid_row_labels(df),
                   _col=[f"{m} · {s}" for m, s in zip(df["model"], df["sparsity_label"],
                                                      strict=True)],
                   _key=[(m, tables.sparsity_key(s, p, me)) for m, s, p, me in
                         zip(df["model"], df["sparsity"], df["pattern"], df["method"],
                             strict=True)])
    return tables.latest_runs(df, ["_row", "_col"])


def compute_time_grid(rows: pd.DataFrame, group: str, metric: str = "prune_seconds"
                      ) -> tables.Table:
    """Rows = methods, columns = '<model> · <sparsity>', cells = seconds (latest run per cell).

    ``rows`` are prepared metric rows of kind 'timing'; one ``group`` (a published source or own
    runs) at a time, since times from different machines are not comparable.
    """
    df = _time_cells(rows, group, metric)
    if df.empty:
        return tables.Table(pd.DataFrame(columns=["Method"]))
    keys = dict(zip(df["_col"], df["_key"], strict=True))
    columns = sorted(keys, key=keys.__getitem__)
    row_order = sorted(dict.fromkeys(df["_row"]), key=tables.natural_key)
    df = df.assign(_value=df["value"].astype(float),
                   _text=[tables.NO_VALUE if st == "missing" else None for st in df["status"]])
    frame, formats = grid_frame(df, row_order, columns, tables.MISSING)
    label = "pruning" if metric == "prune_seconds" else "evaluation"
    notes = [f"{group}: {label} time in seconds; rows are the latest run of each method."]
    return tables.Table(frame, formats, notes)


def compute_time_long(rows: pd.DataFrame, group: str, metric: str = "prune_seconds"
                      ) -> pd.DataFrame:
    """The cells of :func:`compute_time_grid` as long rows (for the bar chart), with hover text."""
    df = _time_cells(rows, group, metric)
    df = df[df["status"] == "ok"] if not df.empty else df
    if df.empty:
        return pd.DataFrame(columns=["model", "method", "sparsity", "seconds", "run", "spec"])
    keys = list(df["_key"])
    df = df.iloc[sorted(range(len(df)), key=keys.__getitem__)]
    return pd.DataFrame({"model": df["model"].to_numpy(), "method": df["_row"].to_numpy(),
                         "sparsity": df["sparsity_label"].to_numpy(),
                         "seconds": df["value"].astype(float).to_numpy(),
                         "run": df["run_id"].to_numpy(), "source": df["group"].to_numpy(),
                         "spec": df["spec"].to_numpy()})


COST_COLUMNS = ["Run", "Model", "Method", "Prune (s)", "Eval (s)", "Peak memory (MB)", "Device",
                "Settings"]


def run_costs(timing: pd.DataFrame, memory: pd.DataFrame) -> tables.Table:
    """One row per own run: pruning and evaluation wall time, peak memory and device."""
    formats = {"Run": "run", "Prune (s)": "ppl", "Eval (s)": "ppl", "Peak memory (MB)": "int"}
    own = pd.concat([timing, memory]) if not (timing.empty and memory.empty) else timing
    own = own[own["origin"] == "own"] if not own.empty else own
    if own.empty:
        return tables.Table(pd.DataFrame(columns=COST_COLUMNS), formats)
    values = own.drop_duplicates(["run_id", "metric"], keep="last").pivot(
        index="run_id", columns="metric", values="value")
    first = own.drop_duplicates("run_id").set_index("run_id").loc[values.index]

    def metric(name: str) -> Any:
        return values[name].to_numpy() if name in values else math.nan

    records = pd.DataFrame({
        "Run": values.index.to_numpy(), "Model": first["model"].to_numpy(),
        "Method": tables.run_labels(first),
        "Prune (s)": metric("prune_seconds"), "Eval (s)": metric("eval_seconds"),
        "Peak memory (MB)": metric("peak_mb"),
        "Device": [str(spec.get("device", "")) for spec in first["spec"]],
        "Settings": first["settings"].to_numpy()})
    frame = pd.DataFrame(records, columns=COST_COLUMNS).sort_values("Run", ascending=False)
    notes = ["Prune: wall time of the layer-by-layer pruning (calibration included); Eval: "
             "all evaluations of the run; peak memory: resident memory of the run's process "
             "(GPU memory on a GPU device)."]
    return tables.Table(frame.reset_index(drop=True), formats, notes)


# -- ablation grids (seed 004 Table 4) ------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    """One grid: an own sweep (``sweep_id``) or a published table of one model and method."""

    label: str
    origin: str  # "own" or "published"
    sweep_id: int | None = None
    group: str = ""
    table: str = ""
    model: str = ""
    method: str = ""


def _varying(specs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for s in specs for k in tables.settings_of(s)})
    return [k for k in keys
            if len({tables.settings_of(s).get(k) for s in specs}) > 1]


def ablation_list(store: Store, perplexity: pd.DataFrame) -> list[Ablation]:
    """Own sweeps (newest first), then published tables whose rows vary in >= 1 parameter."""
    found: list[Ablation] = []
    for row in queries.sweeps(store).itertuples():
        grid = tables.parse_spec(row.spec).get("grid", {})
        params = " × ".join(p.rpartition(".")[2] for p in grid)
        found.append(Ablation(
            label=f"Sweep {row.id}: {row.model} · "
                  f"{tables.row_label(row.method, row.sparsity, row.pattern)} · {params}",
            origin="own", sweep_id=int(row.id), model=row.model, method=row.method))
    published = perplexity[perplexity["origin"] == "published"] if not perplexity.empty \
        else perplexity
    if not published.empty:
        for (group, table, model, method), part in published.groupby(
                ["group", "table", "model", "method"], sort=True):
            params = _varying(list(part["spec"]))
            if params:
                found.append(Ablation(
                    label=f"{table}: {model} · {tables.method_label(method)} · "
                          f"{' × '.join(params)} ({group})",
                    origin="published", group=group, table=table, model=model, method=method))
    return found


def ablation_cells(store: Store, perplexity: pd.DataFrame, ablation: Ablation,
                   dataset: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The grid's cells (one row per cell: parameter columns, ppl, status, run) and its
    parameter columns."""
    if ablation.origin == "own":
        cells = sweep_cells(store, int(ablation.sweep_id), dataset)
        params = [c for c in cells.columns if c not in ("run", "status", "ppl", "ppl_status")]
        cells = cells.assign(status=[(p if p in _NO_NUMBER else s) for s, p in
                                     zip(cells["status"], cells["ppl_status"], strict=True)])
        return cells.drop(columns="ppl_status"), params
    part = perplexity[(perplexity["group"] == ablation.group)
                      & (perplexity["table"] == ablation.table)
                      & (perplexity["model"] == ablation.model)
                      & (perplexity["method"] == ablation.method)]
    if dataset is not None:
        part = part[part["dataset"] == dataset]
    params = _varying(list(part["spec"]))
    records = []
    for rec in part.to_dict("records"):
        values = tables.settings_of(rec["spec"])
        cell = {p: _number(values.get(p)) for p in params}
        status = rec["status"] if rec["status"] in ("ok", *_NO_NUMBER) else "missing"
        cell.update({"run": rec["run_id"], "status": "done" if status == "ok" else status,
                     "ppl": float(rec["value"]) if status == "ok" else math.nan})
        records.append(cell)
    return pd.DataFrame(records), params


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def best_cell(cells: pd.DataFrame) -> pd.Series | None:
    """The finite lowest-perplexity cell (the first of ties in grid order), or None."""
    finite = cells[cells["ppl"].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    return None if finite.empty else finite.loc[finite["ppl"].idxmin()]


def ablation_table(cells: pd.DataFrame, rows: str, columns: str) -> tables.Table:
    """``rows`` x ``columns`` perplexities as seed 004 Table 4; the best cell marked 'best'.

    A cell with no result says why: '—' (not in the grid's results), 'diverged', 'collapsed', or
    the run's status (queued, running, failed ...).
    """
    if cells.empty:
        return tables.Table(pd.DataFrame(columns=[rows]))
    row_values = sorted(dict.fromkeys(cells[rows]), key=_sort_value)
    col_values = sorted(dict.fromkeys(cells[columns]), key=_sort_value)
    best = best_cell(cells)
    frame = pd.DataFrame({f"{rows} \\ {columns}": [_label(v) for v in row_values]})
    formats = {}
    for col in col_values:
        name = _label(col)
        values, texts, runs = [], [], []
        for row in row_values:
            match = cells[(cells[rows] == row) & (cells[columns] == col)]
            if match.empty:
                values.append(math.nan)
                texts.append(tables.MISSING)
                runs.append(None)
                continue
            cell = match.iloc[-1]
            values.append(cell["ppl"])
            runs.append(None if pd.isna(cell["run"]) else int(cell["run"]))
            if best is not None and cell.name == best.name:
                texts.append(f"{cell['ppl']:.2f} ({BEST})")
            elif math.isnan(cell["ppl"]):
                texts.append(tables._cell_text(cell["status"], tables.MISSING)
                             or (tables.MISSING if cell["status"] == "done"
                                 else str(cell["status"])))
            else:
                texts.append(None)
        frame[name] = values
        frame[tables.TEXT + name] = texts
        frame[RUN + name] = runs  # hidden: the run behind each cell, for hover text
        formats[name] = "ppl"
    notes = [f"Perplexity for each {rows} (rows) and {columns} (columns); lower is better."]
    if best is not None:
        notes.append(f"Best: {rows}={_label(best[rows])}, {columns}={_label(best[columns])} "
                     f"(perplexity {best['ppl']:.2f}, {tables.run_reference(int(best['run']))}).")
    else:
        notes.append("No cell has a finite perplexity yet.")
    return tables.Table(frame, formats, notes)


def _sort_value(value: Any) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def grid_spec(store: Store, perplexity: pd.DataFrame, ablation: Ablation) -> str:
    """The settings every cell of the grid shares, as hover text ('method=sparsellm, ...')."""
    if ablation.origin == "own":
        definition = tables.parse_spec(queries.run_spec(store, int(ablation.sweep_id)))
        base = copy.deepcopy(definition.get("base", {}))
        for path in definition.get("grid", {}):  # the swept values differ per cell: leave out
            head, _, rest = path.partition(".")
            if rest and isinstance(base.get(head), dict):
                base[head].pop(rest, None)
            else:
                base.pop(head, None)
        return tables.spec_summary({"model": ablation.model, **base})
    part = perplexity[(perplexity["group"] == ablation.group)
                      & (perplexity["table"] == ablation.table)
                      & (perplexity["model"] == ablation.model)
                      & (perplexity["method"] == ablation.method)]
    if part.empty:
        return ""
    specs = list(part["spec"])
    varying = set(_varying(specs))
    return tables.spec_summary({k: v for k, v in specs[0].items() if k not in varying})


def sweep_cells(store: Store, sweep_id: int, dataset: str | None = None) -> pd.DataFrame:
    """Long table: one row per cell with its parameter values, run, status, perplexity (NaN
    unless 'ok') and the perplexity's metric status ('ppl_status')."""
    sweep = queries.run_spec(store, sweep_id, kind="sweep")
    if sweep is None:
        raise ValueError(f"no sweep {sweep_id}")
    # The run kind imports the engine (torch, transformers: seconds): only a sweep needs it.
    from core.runs.kinds.prune import PruneSpec
    from core.runs.sweep import expand, get_path

    definition = json.loads(sweep)
    base = PruneSpec.from_dict(definition["base"])
    grid = definition["grid"]
    dataset = dataset or (base.ppl_datasets[0] if base.ppl_datasets else None)
    runs = queries.own_prune_runs_with_perplexity(store, dataset)
    by_identity = {}
    for row in runs.itertuples():
        spec = PruneSpec.from_dict(json.loads(row.spec))
        by_identity[json.dumps(spec.identity(), sort_keys=True)] = row  # latest run wins
    records = []
    for cell in expand(base, grid):
        row = by_identity.get(json.dumps(cell.identity(), sort_keys=True))
        record = {path: get_path(cell.to_dict(), path) for path in grid}
        record.update({
            "run": int(row.id) if row is not None else None,
            "status": row.status if row is not None else "missing",
            "ppl": row.value if row is not None and row.metric_status == "ok" else math.nan,
            "ppl_status": row.metric_status if row is not None else None,
        })
        records.append(record)
    return pd.DataFrame(records)


def sweep_matrix(cells: pd.DataFrame, rows: str, columns: str) -> tuple[pd.DataFrame, tuple]:
    """Seed 004 Table 4 layout: ``rows`` x ``columns`` perplexities, and the best cell's key."""
    matrix = cells.pivot_table(index=rows, columns=columns, values="ppl", aggfunc="min",
                               dropna=False)
    matrix = matrix.sort_index().sort_index(axis=1)
    finite = cells.dropna(subset=["ppl"])
    best = ()
    if not finite.empty:
        winner = finite.loc[finite["ppl"].idxmin()]
        best = (winner[rows], winner[columns])
    return matrix, best
