"""Published reference figures: CSV files in ``core/store/published/`` imported into the store.

``figures.csv`` holds one number per row (perplexity, accuracy, timing, ...); rows that share
source, table, model, method, pattern, sparsity and params form one published "run".
``search_trials.csv`` holds the rows of activation-sparsity parameter-search tables.
Importing them is an explicit start-up step (``sync``); each published run keeps an id derived
from what identifies it (``run_id``), so re-importing changed files keeps the ids of the runs
that are still there.
A number the source printed as ``nan`` or left empty is stored with no value, its status and the
printed text kept, never replaced by a made-up number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from core.store.db import (
    SETTING_COLUMNS,
    Store,
    bump_results,
    insert_rows,
    setting_values,
    spec_hash,
)

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
FIGURES = PUBLISHED_DIR / "figures.csv"
TRIALS = PUBLISHED_DIR / "search_trials.csv"

FIGURE_COLUMNS = ("source", "ref", "table", "model", "method", "pattern", "sparsity", "kind",
                  "dataset", "metric", "value", "raw", "note", "params")
TRIAL_COLUMNS = ("source", "ref", "table", "model", "task", "metric", "goal", "trial", "label",
                 "params", "actual_sparsity", "value", "n_samples", "raw", "note")


#: Per-number keys of ``params`` (they describe the number, not the run).
ROW_KEYS = ("block",)
IMPORTER_VERSION = "3"  # bump when the mapping of CSV rows to runs changes (3: stable ids)
#: Published run ids lie in [-ID_SPAN, -1] (see ``run_id``): nine digits at most, short enough
#: to read and to type in a URL; a clash between two of the few hundred keys is refused at import.
ID_SPAN = 10**9 - 1


def _read(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path.name} lacks columns {sorted(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise ValueError(f"{path.name} line {line} has more fields than the header")
            if any((v or "").strip() for v in row.values()):
                rows.append(row)
        return rows


def _number(text: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _checked_value(row: dict[str, str], where: str) -> float | None:
    """The row's value; an empty value whose printed text is a plain number is a transcription
    slip and is refused."""
    value = _number(row["value"])
    raw = (row.get("raw") or "").strip().rstrip("%")
    if value is None and raw:
        try:
            float(raw)
        except ValueError:
            return None
        if math.isfinite(float(raw)):
            raise ValueError(f"{where}: value is empty but the source printed {row['raw']!r}")
    return value


def _status(row: dict[str, str], value: float | None) -> str:
    if value is not None:
        return "ok"
    raw = (row.get("raw") or "").strip().lower()
    return "diverged" if raw in ("nan", "inf", "+nan%", "nan%") or "nan" in raw else "missing"


def _params(text: str) -> dict[str, Any]:
    text = (text or "").strip()
    return json.loads(text) if text else {}


def fingerprint() -> str:
    """Hash of the CSV files: a changed file is re-imported on the next start."""
    digest = hashlib.sha256(IMPORTER_VERSION.encode())
    for path in (FIGURES, TRIALS):
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# -- stable ids ----------------------------------------------------------------------------------
def run_id(key: tuple) -> int:
    """The id of the published run ``key``: the same key always gives the same id.

    ``key`` is what makes one published run (see ``figure_key`` and ``trial_key``): where it was
    printed (source, ref, table) and the run it describes (model, method, pattern, sparsity and
    its settings; for a search table: model, task and goal).  The numbers themselves are not part
    of it: a corrected figure is the same run with a new value, so its id stays.  Ids are
    negative, in ``[-ID_SPAN, -1]``: own runs take theirs from the ``run_ids`` sequence, which
    starts at 1, so the two never meet; and every id stays exactly representable as a float,
    as pandas holds a column of run ids with gaps (e.g. "Baseline run").
    """
    canonical = json.dumps(key, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % ID_SPAN)


def figure_key(row: dict[str, str], params: dict[str, Any]) -> tuple:
    """What identifies the run of a figures.csv row (``params`` without the ``ROW_KEYS``)."""
    return ("fig", row["source"], row["ref"], row["table"], row["model"], row["method"],
            row["pattern"], _number(row["sparsity"]), json.dumps(params, sort_keys=True))


def trial_key(row: dict[str, str]) -> tuple:
    """What identifies the search run of a search_trials.csv row."""
    return ("search", row["source"], row["ref"], row["table"], row["model"], row["task"],
            _number(row["goal"]))


# -- the CSV rows as runs ------------------------------------------------------------------------
@dataclass
class PublishedRun:
    """One published run as the CSV files give it: its ``runs`` columns and its rows."""

    key: tuple
    fields: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)


def _run(runs: dict[int, PublishedRun], key: tuple, **fields: Any) -> PublishedRun:
    """The run of ``key`` in ``runs`` (created on its first row); two keys with one id fail."""
    rid = run_id(key)
    run = runs.get(rid)
    if run is None:
        run = runs[rid] = PublishedRun(key, fields)
    elif run.key != key:
        raise ValueError(f"published runs {run.key} and {key} hash to the same id {rid}")
    return run


def _add_figure(runs: dict[int, PublishedRun], row: dict[str, str], line: int) -> None:
    params = _params(row["params"])
    row_keys = {k: params.pop(k) for k in ROW_KEYS if k in params}
    sparsity = _number(row["sparsity"])
    spec = {"source": row["source"], "ref": row["ref"], "table": row["table"],
            "model": row["model"], "method": row["method"], "pattern": row["pattern"],
            "sparsity": sparsity}
    clash = set(params) & set(spec)
    if clash:
        raise ValueError(f"figures.csv line {line}: params repeat columns {sorted(clash)}")
    spec.update(params)
    run = _run(runs, figure_key(row, params), kind="published", model=row["model"],
               method=row["method"], sparsity=sparsity, pattern=row["pattern"],
               source=row["source"], spec=spec)
    value = _checked_value(row, f"figures.csv line {line}")
    if row["kind"] == "layer_stat":
        run.layer_stats.append({
            "block": int(row_keys["block"]) if "block" in row_keys else None,
            "layer": row["dataset"], "stat": row["metric"], "value": value, "raw": row["raw"],
            "note": row["note"] or None})
        return
    run.metrics.append({
        "kind": row["kind"], "dataset": row["dataset"], "metric": row["metric"], "value": value,
        "status": _status(row, value), "raw": row["raw"], "note": row["note"] or None})


def _add_trial(runs: dict[int, PublishedRun], row: dict[str, str]) -> None:
    goal = _number(row["goal"])
    spec = {"source": row["source"], "ref": row["ref"], "table": row["table"],
            "model": row["model"], "task": row["task"], "metric": row["metric"], "goal": goal}
    run = _run(runs, trial_key(row), kind="search", model=row["model"],
               method="sparsity-levels", sparsity=None, pattern="activation",
               source=row["source"], spec=spec)
    params = (row["params"] or "").strip()
    run.trials.append({
        "trial": int(row["trial"]), "label": row["label"] or None,
        "params": json.loads(params) if params else None,
        "actual_sparsity": _number(row["actual_sparsity"]), "metric": row["metric"],
        "value": _number(row["value"]), "raw": row["raw"], "note": row["note"] or None,
        "n_samples": int(row["n_samples"]) if row["n_samples"] else None})


def collect() -> dict[int, PublishedRun]:
    """Every published run of the CSV files, by its stable id (CSV order)."""
    runs: dict[int, PublishedRun] = {}
    for line, row in enumerate(_read(FIGURES, FIGURE_COLUMNS), start=2):
        _add_figure(runs, row, line)
    for row in _read(TRIALS, TRIAL_COLUMNS):
        _add_trial(runs, row)
    return runs


# -- writing them --------------------------------------------------------------------------------
_RUN_COLUMNS = ("kind", "model", "method", "sparsity", "pattern", "source", "spec", "spec_hash",
                *SETTING_COLUMNS.values())


def _run_values(run: PublishedRun) -> list[Any]:
    fields = run.fields
    return [fields["kind"], fields["model"], fields["method"], fields["sparsity"],
            fields["pattern"], fields["source"], json.dumps(fields["spec"], sort_keys=True),
            spec_hash(fields["spec"]), *setting_values(fields["spec"])]


def _write_runs(con: duckdb.DuckDBPyConnection, runs: dict[int, PublishedRun]) -> None:
    """Keep the ``runs`` rows of runs still published (same id, columns updated where they
    changed), drop the others, add the new ones."""
    old = {int(r[0]): list(r[1:]) for r in con.execute(
        f"SELECT id, {', '.join(_RUN_COLUMNS)} FROM runs WHERE origin = 'published'").fetchall()}
    gone = sorted(set(old) - set(runs))
    if gone:
        con.execute("DELETE FROM runs WHERE origin = 'published' AND list_contains(?, id)",
                    [gone])
    changed = [[*values, rid] for rid, run in runs.items()
               if rid in old and old[rid] != (values := _run_values(run))]
    if changed:
        assignments = ", ".join(f"{c} = ?" for c in _RUN_COLUMNS)
        con.executemany(f"UPDATE runs SET {assignments} WHERE id = ?", changed)
    insert_rows(con, "runs", ("id", "origin", "status", *_RUN_COLUMNS),
                [[rid, "published", "done", *_run_values(run)]
                 for rid, run in runs.items() if rid not in old])


def write(store: Store, con: duckdb.DuckDBPyConnection, runs: dict[int, PublishedRun]) -> None:
    """Make the published runs in ``con``'s transaction exactly ``runs`` (own runs stay).

    Runs keep their ids; their metrics, layer statistics and trials are written afresh.
    """
    published_ids = "SELECT id FROM runs WHERE origin = 'published'"
    for table in ("metrics", "layer_stats", "layer_summaries", "search_trials", "run_logs"):
        con.execute(f"DELETE FROM {table} WHERE run_id IN ({published_ids})")
    _write_runs(con, runs)
    bump_results(con)
    store.add_rows(metrics=[(rid, row) for rid, run in runs.items() for row in run.metrics],
                   layer_stats=[(rid, row) for rid, run in runs.items() for row in run.layer_stats],
                   trials=[(rid, row) for rid, run in runs.items() for row in run.trials], con=con)


def _stamp(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key = 'published_fingerprint'").fetchone()
    return row[0] if row else None


def load(store: Store, stamp: str | None = None) -> bool:
    """Replace the published runs with the CSV contents in one transaction (own runs stay).

    With ``stamp`` (the fingerprint being imported), nothing is done when the store already
    holds it (another session imported the same files meanwhile).  Returns True when written.
    """
    runs = collect()
    with store.transaction() as con:
        if stamp is not None and _stamp(con) == stamp:
            return False
        write(store, con, runs)
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('published_fingerprint', ?)",
                    [stamp or fingerprint()])
    return True


def sync(store: Store) -> bool:
    """The start-up step: import the published figures if they are new or changed.

    ``Store.init`` only creates or migrates the schema; the entry points (the dashboard's
    ``session_store``, ``cli.py init``) call this after it.  Cheap when nothing changed (a hash
    of the CSV files and one read).  A read-only store is left as it is.  Returns True when the
    figures were imported.
    """
    if not store.writable:
        return False
    current = fingerprint()
    if store.get_meta("published_fingerprint") == current:
        return False
    return load(store, current)
