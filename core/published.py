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

from core.store import Store

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
FIGURES = PUBLISHED_DIR / "figures.csv"
TRIALS = PUBLISHED_DIR / "search_trials.csv"

FIGURE_COLUMNS = ("source", "ref", "table", "model", "method", "pattern", "sparsity", "kind",
                  "dataset", "metric", "value", "raw", "note", "params")
TRIAL_COLUMNS = ("source", "ref", "table", "model", "task", "metric", "goal", "trial", "label",
                 "params", "actual_sparsity", "value", "raw", "note")


def _read(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path.name} lacks columns {sorted(missing)}")
        return [row for row in reader if any(v.strip() for v in row.values() if v)]


def _number(text: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


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
    digest = hashlib.sha256()
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
    """Replace every published run with the CSV contents, in one transaction (own runs untouched)."""
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
                run_ids[key] = store.create_run(origin="published", status="done", con=con, **fields)
            return run_ids[key]

        for row in figures:
            params = _params(row["params"])
            sparsity = _number(row["sparsity"])
            key = ("fig", row["source"], row["ref"], row["table"], row["model"], row["method"],
                   row["pattern"], sparsity, json.dumps(params, sort_keys=True))
            spec = {"source": row["source"], "ref": row["ref"], "table": row["table"],
                    "model": row["model"], "method": row["method"], "pattern": row["pattern"],
                    "sparsity": sparsity, **params}
            run_id = run_for(key, kind="published", model=row["model"], method=row["method"],
                             sparsity=sparsity, pattern=row["pattern"], source=row["source"],
                             spec=spec)
            value = _number(row["value"])
            if row["kind"] == "layer_stat":
                store.add_layer_stats(run_id, [{
                    "block": int(params["block"]) if "block" in params else None,
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
            key = ("search", row["source"], row["ref"], row["table"], row["model"], row["task"], goal)
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
            }], con=con)
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('published_fingerprint', ?)",
                    [stamp or fingerprint()])
