"""Published reference figures: CSV files in ``core/published/`` imported into the store.

``figures.csv`` holds one number per row (perplexity, accuracy, timing, ...); rows that share
source, table, model, method, pattern, sparsity and params form one published "run".
``search_trials.csv`` holds the rows of activation-sparsity parameter-search tables.
A number the source printed as ``nan`` or left empty is stored with no value, its status and the
printed text kept, never replaced by a made-up number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from core.store.db import Store

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
FIGURES = PUBLISHED_DIR / "figures.csv"
TRIALS = PUBLISHED_DIR / "search_trials.csv"

FIGURE_COLUMNS = ("source", "ref", "table", "model", "method", "pattern", "sparsity", "kind",
                  "dataset", "metric", "value", "raw", "note", "params")
TRIAL_COLUMNS = ("source", "ref", "table", "model", "task", "metric", "goal", "trial", "label",
                 "params", "actual_sparsity", "value", "n_samples", "raw", "note")


#: Per-number keys of ``params`` (they describe the number, not the run).
ROW_KEYS = ("block",)
IMPORTER_VERSION = "2"  # bump when the mapping of CSV rows to runs changes


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


def sync(store: Store) -> bool:
    """Import the published figures if they are new or changed.  Returns True when imported."""
    current = fingerprint()
    if store.get_meta("published_fingerprint") == current:
        return False
    load(store, current)
    return True


def load(store: Store, stamp: str | None = None) -> None:
    """Replace every published run with the CSV contents in one transaction (own runs stay)."""
    figures = _read(FIGURES, FIGURE_COLUMNS)
    trials = _read(TRIALS, TRIAL_COLUMNS)
    with store.transaction() as con:
        old = "SELECT id FROM runs WHERE origin = 'published'"
        for table in ("metrics", "layer_stats", "search_trials", "run_logs"):
            con.execute(f"DELETE FROM {table} WHERE run_id IN ({old})")
        con.execute("DELETE FROM runs WHERE origin = 'published'")

        run_ids: dict[tuple, int] = {}

        def run_for(key: tuple, **fields: Any) -> int:
            if key not in run_ids:
                run_ids[key] = store.create_run(origin="published", status="done", con=con,
                                                **fields)
            return run_ids[key]

        for line, row in enumerate(figures, start=2):
            params = _params(row["params"])
            row_keys = {k: params.pop(k) for k in ROW_KEYS if k in params}
            sparsity = _number(row["sparsity"])
            key = ("fig", row["source"], row["ref"], row["table"], row["model"], row["method"],
                   row["pattern"], sparsity, json.dumps(params, sort_keys=True))
            spec = {"source": row["source"], "ref": row["ref"], "table": row["table"],
                    "model": row["model"], "method": row["method"], "pattern": row["pattern"],
                    "sparsity": sparsity}
            clash = set(params) & set(spec)
            if clash:
                raise ValueError(f"figures.csv line {line}: params repeat columns {sorted(clash)}")
            spec.update(params)
            run_id = run_for(key, kind="published", model=row["model"], method=row["method"],
                             sparsity=sparsity, pattern=row["pattern"], source=row["source"],
                             spec=spec)
            value = _checked_value(row, f"figures.csv line {line}")
            if row["kind"] == "layer_stat":
                store.add_layer_stats(run_id, [{
                    "block": int(row_keys["block"]) if "block" in row_keys else None,
                    "layer": row["dataset"], "stat": row["metric"], "value": value,
                    "raw": row["raw"], "note": row["note"] or None,
                }], con=con)
                continue
            store.add_metrics(run_id, [{
                "kind": row["kind"], "dataset": row["dataset"], "metric": row["metric"],
                "value": value, "status": _status(row, value), "raw": row["raw"],
                "note": row["note"] or None,
            }], con=con)

        for row in trials:
            goal = _number(row["goal"])
            key = ("search", row["source"], row["ref"], row["table"], row["model"], row["task"],
                   goal)
            spec = {"source": row["source"], "ref": row["ref"], "table": row["table"],
                    "model": row["model"], "task": row["task"], "metric": row["metric"],
                    "goal": goal}
            run_id = run_for(key, kind="search", model=row["model"], method="sparsity-levels",
                             sparsity=None, pattern="activation", source=row["source"], spec=spec)
            params = (row["params"] or "").strip()
            store.add_search_trials(run_id, [{
                "trial": int(row["trial"]), "label": row["label"] or None,
                "params": json.loads(params) if params else None,
                "actual_sparsity": _number(row["actual_sparsity"]), "metric": row["metric"],
                "value": _number(row["value"]), "raw": row["raw"], "note": row["note"] or None,
                "n_samples": int(row["n_samples"]) if row["n_samples"] else None,
            }], con=con)
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('published_fingerprint', ?)",
                    [stamp or fingerprint()])
