"""Helpers the table builders share: cell texts, numbers of 'ok' rows, and why a row has no
dense baseline."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.analysis import baselines
from core.present.labels import (
    COLLAPSED,
    DIVERGED,
    MISSING,
    TEXT,
    _isna,
    _setting,
    _short,
)

#: Evaluation settings an own run's dense baseline must share (different windows, few-shot count,
#: example limit or dtype give numbers that cannot be compared).
PPL_SETTING_KEYS = baselines.PPL_SETTINGS
ZS_SETTING_KEYS = baselines.ZS_SETTINGS


def _cell_text(status: Any, missing: str = MISSING) -> str | None:
    """The word shown instead of a number: 'diverged', 'collapsed', ``missing`` (None: a
    number)."""
    if status == "diverged":
        return DIVERGED
    if status == "collapsed":
        return COLLAPSED
    if status == "missing" or status is None:
        return missing
    return None


def _value(row: Mapping[str, Any]) -> float:
    """The number of an 'ok' row, NaN otherwise."""
    if row.get("status", "ok") != "ok" or _isna(row.get("value")):
        return math.nan
    return float(row["value"])


def _join(*parts: Any) -> str:
    return "; ".join(str(p) for p in parts if isinstance(p, str) and p)


def settings_text(spec: Mapping[str, Any], keys: Sequence[str]) -> str:
    """'ppl_seqlen=256, max_windows=4, dtype=float32' (None shown as 'none')."""
    return ", ".join(f"{k}={_short(_setting(spec, k)) if _setting(spec, k) is not None else 'none'}"
                     for k in keys)


def _other_dense(cands: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    shown = [f"run {c['run_id']} ({settings_text(c.get('spec') or {}, keys)})"
             for c in sorted(cands, key=lambda c: c["run_id"])[-3:]]
    more = len(cands) - len(shown)
    return "; ".join(shown) + (f" and {more} more" if more > 0 else "")


class _NoBaseline:
    """Why a row has no dense baseline, worded from the dense rows it could have been compared
    with (``key`` says which); only rows left without a baseline ask, so this stays cheap."""

    def __init__(self, records: Sequence[Mapping[str, Any]], key: Callable[[Mapping], tuple],
                 settings: Sequence[str]) -> None:
        self.records, self.key, self.settings = records, key, settings
        self._dense: dict[tuple, list[Mapping[str, Any]]] | None = None
        self._others: dict[tuple, str] = {}

    def candidates(self, rec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        if self._dense is None:
            self._dense = {}
            for other in self.records:
                if other["dense"]:
                    self._dense.setdefault(self.key(other), []).append(other)
        return self._dense.get(self.key(rec), [])

    def _differ(self, rec: Mapping[str, Any]) -> str:
        key = self.key(rec)
        if key not in self._others:
            self._others[key] = _other_dense(self.candidates(rec), self.settings)
        return (f"({settings_text(rec.get('spec') or {}, self.settings)}); dense "
                f"{self._others[key]} differ")

    def perplexity(self, rec: Mapping[str, Any]) -> str:
        if not self.candidates(rec):
            return (f"no dense baseline for {rec['model']} on {rec['dataset']} "
                    f"in {rec['group']}: Δ not computed")
        return (f"no dense run of {rec['model']} on {rec['dataset']} evaluated with the same "
                f"settings {self._differ(rec)}: Δ not computed")

    def zero_shot(self, rec: Mapping[str, Any]) -> str:
        if not self.candidates(rec):
            return (f"no dense baseline for {rec['model']} in {rec['group']}: "
                    "retention not computed")
        return (f"no dense run of {rec['model']} evaluated with the same zero-shot settings "
                f"{self._differ(rec)}: not compared")


def _values(df: pd.DataFrame) -> np.ndarray:
    """The number of each 'ok' row, NaN otherwise (``_value`` on a whole frame)."""
    ok = (df["status"] == "ok").to_numpy(dtype=bool) & df["value"].notna().to_numpy()
    return np.where(ok, df["value"].to_numpy(dtype=float, na_value=np.nan), np.nan)


def grid_frame(cells: pd.DataFrame, rows: list[str], columns: list[str], absent: str | None
               ) -> tuple[pd.DataFrame, dict[str, str]]:
    """A 'Method' x columns table of perplexity-like numbers from one cell per (``_row``,
    ``_col``) with its ``_value`` and ``_text``; a cell with no row reads ``absent``."""
    cells = cells.assign(_here=True)

    def grid(values: str) -> pd.DataFrame:
        return cells.pivot(index="_row", columns="_col", values=values).reindex(
            index=rows, columns=columns)

    numbers, texts, here = grid("_value"), grid("_text"), grid("_here")
    data: dict[str, Any] = {"Method": rows}
    for col in columns:
        data[col] = numbers[col].to_numpy(dtype=float, na_value=np.nan)
        data[TEXT + col] = [t if h else absent for t, h in
                            zip(texts[col].to_numpy(dtype=object), here[col].notna(),
                                strict=True)]
    return pd.DataFrame(data), dict.fromkeys(columns, "ppl")
