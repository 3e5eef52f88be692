"""Read models for the Launch and Runs pages: run list, progress, logs (no Streamlit here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.methods import REGISTRY
from core.store import Store


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 0.0

    @property
    def text(self) -> str:
        unit = "block" if self.stage == "pruning" else "step"
        return f"{self.stage}: {unit} {self.done} of {self.total} ({self.fraction:.0%})"


def parse_progress(value: Any) -> Progress | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    data = json.loads(value) if isinstance(value, str) else value
    return Progress(str(data.get("stage", "")), int(data.get("done", 0)),
                    int(data.get("total", 0)))


def sparsity_label(method: str, pattern: str, sparsity: float | None) -> str:
    if method == "dense" or pattern == "dense":
        return "dense"
    if pattern and ":" in pattern:
        return pattern
    return f"{sparsity:.0%}" if sparsity is not None and not pd.isna(sparsity) else "—"


def runs_table(store: Store) -> pd.DataFrame:
    """The user's own runs, newest first, ready to show."""
    frame = store.frame(
        "SELECT id, status, model, method, pattern, sparsity, progress, created_at, started_at, "
        "finished_at, error, cancel_requested FROM runs WHERE origin = 'own' ORDER BY id DESC")
    if frame.empty:
        return frame
    frame["sparsity"] = [sparsity_label(m, p, s) for m, p, s in
                         zip(frame["method"], frame["pattern"], frame["sparsity"], strict=True)]
    progress = [parse_progress(p) for p in frame["progress"]]
    frame["progress"] = [p.fraction * 100 if p else None for p in progress]
    frame["stage"] = [p.text if p else "" for p in progress]
    frame.loc[frame["cancel_requested"].fillna(False).astype(bool)
              & (frame["status"] == "running"), "status"] = "cancelling"
    return frame.drop(columns=["pattern", "cancel_requested"]).rename(columns={"id": "run"})


def run_detail(store: Store, run_id: int) -> dict[str, Any]:
    frame = store.frame("SELECT * FROM runs WHERE id = ?", [run_id])
    if frame.empty:
        raise ValueError(f"no run {run_id}")
    row = frame.iloc[0].to_dict()
    for key in ("spec", "environment"):
        row[key] = json.loads(row[key]) if isinstance(row[key], str) else None
    row["progress"] = parse_progress(row["progress"])
    return row


def log_tail(store: Store, run_id: int, lines: int = 40) -> list[str]:
    frame = store.frame("SELECT ts, line FROM run_logs WHERE run_id = ? ORDER BY ts DESC, "
                        "rowid DESC LIMIT ?", [run_id, lines])
    return [f"{ts:%H:%M:%S}  {line}" for ts, line in
            zip(frame["ts"][::-1], frame["line"][::-1], strict=True)]


def method_parameters(method: str) -> dict[str, Any]:
    """A method's tunable parameters and their defaults (for the launch form)."""
    return dict(REGISTRY[method].defaults) if method in REGISTRY else {}


def status_counts(store: Store) -> dict[str, int]:
    frame = store.frame("SELECT status, count(*) AS n FROM runs WHERE origin = 'own' "
                        "GROUP BY status")
    return dict(zip(frame["status"], frame["n"].astype(int), strict=True))
