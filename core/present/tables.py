"""Every table the dashboard shows, built from store frames with pandas (no Streamlit here).

A builder returns a :class:`Table`: a frame whose value columns stay numeric (NaN where there is no
number) plus hidden ``_text:<column>`` columns that say why a cell has no number ("diverged",
"—" for a missing value, "baseline" ...).  ``Table.display()`` formats it as the page shows it and
as it is exported.

Conventions: published rows are compared only with published rows of the same source, own runs
only with own runs ("group"); a dense baseline is the dense run of the same model, dataset and
group.  An own run is compared only with a dense run evaluated under the same settings
(perplexity: ``PPL_SETTING_KEYS``; zero-shot: ``ZS_SETTING_KEYS``); when there is none the
comparison is left blank with a note saying why.  Printed summaries (kinds ``zero_shot_summary``
and ``search_summary``) are provenance only: averages, retention and "% of CoreInfer" are
computed here from the stored scores.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from core.analysis import baselines
from core.store import queries
from core.store.db import SETTING_COLUMNS, setting_value

if TYPE_CHECKING:
    from core.store.db import Store

OWN_GROUP = "Own runs"
TEXT = "_text:"  # prefix of the hidden column holding a cell's text in place of its number
DIVERGED = "diverged"
MISSING = "—"
NO_VALUE = "no value"
FAILED = "failed"
BASELINE = "baseline"

OPTIONAL_COLUMNS = ("Settings", "Evaluation", "Note")
ORIGIN_NAMES = {"published": "Published", "own": "Own run"}
#: The origin filter's choices and the origins each keeps (None: no filter).
ORIGIN_FILTERS: dict[str, list[str] | None] = {
    "All": None, "Published": ["published"], "Own runs": ["own"]}
METHOD_NAMES = {
    "dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
    "sparsellm": "SparseLLM", "coreinfer": "CoreInfer", "sparsity-levels": "Sparsity levels",
}
DATASET_SHORT = {"wikitext2": "WT2", "ptb": "PTB", "c4": "C4"}
DATASET_ORDER = ("wikitext2", "ptb", "c4")
TASK_ORDER = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq", "rte", "winogrande",
              "openbookqa")
METRIC_NAMES = {
    "ppl": "PPL", "acc": "Accuracy", "acc_norm": "Accuracy (norm)", "bleu_max": "BLEU Max",
    "bleu": "BLEU", "exact": "Exact Match", "exact_match": "Exact Match", "em": "Exact Match",
    "f1": "F1",
}
CONFIG_ORDER = {"coreinfer": 0, "best": 1, "avg": 2}
#: Spec keys already shown in their own columns; the rest are a run's "settings".
SPEC_SHOWN = frozenset({"source", "ref", "table", "model", "method", "pattern", "sparsity"})
#: Spec keys that say what was measured rather than how the model was made (zero-shot settings
#: are shown in the zero-shot tables' Evaluation column).
SPEC_MEASURED = frozenset({"kind", "dataset", "datasets", "task", "tasks", "metric", "metrics",
                           "config", "goal", "trial", "ppl_datasets", "zero_shot_tasks",
                           "num_fewshot", "zs_limit"})
#: Spec keys that say where or how a run was executed, not what it computed.
SPEC_EXECUTION = frozenset({"batch_size", "device", "save_dir", "trust_remote_code"})

_NOT_SETTINGS = SPEC_SHOWN | SPEC_MEASURED | SPEC_EXECUTION

#: Evaluation settings an own run's dense baseline must share (different windows, few-shot count,
#: example limit or dtype give numbers that cannot be compared).
PPL_SETTING_KEYS = baselines.PPL_SETTINGS
ZS_SETTING_KEYS = baselines.ZS_SETTINGS
FAILED_PREFIX = "task failed"

_NM = re.compile(r"(\d+):(\d+)")
T = TypeVar("T")


# -- the table type and its formatting ---------------------------------------------------------
@dataclass
class Table:
    """A numeric frame, the display format of each column and notes shown under the table."""

    frame: pd.DataFrame
    formats: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.frame.empty

    @property
    def columns(self) -> list[str]:
        """The visible columns (hidden ones start with an underscore)."""
        return [c for c in self.frame.columns if not str(c).startswith("_")]

    @property
    def numeric_columns(self) -> list[str]:
        """Visible columns that hold numbers (pages right-align them)."""
        return [c for c in self.columns if self.formats.get(c, "text") != "text"]

    def text(self, column: str) -> pd.Series:
        """The text shown instead of a number in ``column`` (None where the number is shown)."""
        hidden = TEXT + column
        if hidden in self.frame:
            return self.frame[hidden]
        return pd.Series([None] * len(self.frame), index=self.frame.index, dtype=object)

    def display(self) -> pd.DataFrame:
        """The table as strings, exactly as shown on the page and exported.

        Optional columns (Settings, Note) are left out when every cell is blank.
        """
        out: dict[str, list[str]] = {}
        for column in self.columns:
            kind = self.formats.get(column, "text")
            if kind == "auto":
                kind = f"fixed{column_decimals(self.frame[column])}"
            values = self.frame[column].to_numpy(dtype=object)
            texts = self.text(column).to_numpy(dtype=object)
            out[column] = [text if isinstance(text, str) else format_value(value, kind)
                           for value, text in zip(values, texts, strict=True)]
        columns = [c for c in self.columns
                   if c not in OPTIONAL_COLUMNS or any(v.strip() for v in out[c])]
        return pd.DataFrame({c: out[c] for c in columns}, columns=columns, dtype=object)


def column_decimals(values: Iterable[Any], most: int = 3) -> int:
    """The fewest decimals (up to ``most``) that show every number of a column exactly."""
    needed = 0
    for value in values:
        if _isna(value) or isinstance(value, str):
            continue
        for places in range(most + 1):
            if abs(round(float(value), places) - float(value)) < 1e-9:
                break
        needed = max(needed, places)
    return needed


def _isna(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    if isinstance(value, str | int):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_value(value: Any, kind: str = "text") -> str:
    """Format one cell: ppl, delta (already %), pct (fraction as %), percent (already %), points
    (percentage points, signed), ..."""
    if _isna(value):
        return ""
    if kind == "text":
        return str(value)
    number = float(value)
    if math.isinf(number):
        return DIVERGED
    if kind.startswith("fixed"):
        return f"{number:.{int(kind[5:] or 0)}f}"
    formats = {
        "ppl": lambda v: f"{v:.2f}",
        "delta": lambda v: f"{v:+.2f}%" if round(v, 2) != 0 else "0.00%",
        "pct": lambda v: f"{v * 100:.2f}%",
        "percent": lambda v: f"{v:.2f}%",
        "points": lambda v: f"{v:+.2f}" if round(v, 2) != 0 else "0.00",
        "sparsity": lambda v: f"{v:.3f}",
        "int": lambda v: f"{v:.0f}",
        "score": _score,
    }
    return formats.get(kind, _score)(number)


def _score(value: float) -> str:
    """A task score as printed in reports: up to 4 significant digits, no exponent."""
    if abs(value) >= 1000:
        return f"{value:.1f}"
    text = f"{value:.4g}"
    return text if "e" not in text else f"{value:.6f}".rstrip("0").rstrip(".")


# -- labels --------------------------------------------------------------------------------------
def method_label(method: str) -> str:
    """'wanda' -> 'Wanda'; unknown names are kept as they are."""
    return METHOD_NAMES.get(str(method), str(method))


def metric_label(metric: str) -> str:
    return METRIC_NAMES.get(str(metric), str(metric))


def dataset_label(dataset: str) -> str:
    """Short dataset name used in column headers: wikitext2 -> WT2; a local file -> its name."""
    return DATASET_SHORT.get(str(dataset), dataset_name(dataset))


def dataset_name(dataset: str) -> str:
    """A dataset as tables name it: a local text file by its file name, others as they are."""
    name = str(dataset)
    return name.rsplit("/", 1)[-1] if name.startswith(("/", "~", ".")) else name


def is_nm(pattern: Any) -> bool:
    """True for an N:M pattern such as '2:4'."""
    return bool(_NM.fullmatch(str(pattern or "")))


def sparsity_fraction(sparsity: Any, pattern: Any) -> float:
    """The share of weights pruned (N:M -> N/M, dense -> 0)."""
    match = _NM.fullmatch(str(pattern or ""))
    if match:
        return int(match[1]) / int(match[2])
    if pattern == "dense" or _isna(sparsity):
        return 0.0
    return float(sparsity)


def sparsity_label(sparsity: Any, pattern: Any, method: Any = None) -> str:
    """0.3 -> '30%', pattern '2:4' -> '2:4', dense -> 'Dense'."""
    if pattern == "dense" or method == "dense":
        return "Dense"
    if is_nm(pattern):
        return str(pattern)
    if _isna(sparsity):
        return MISSING
    return f"{round(float(sparsity) * 100, 2):g}%"


def row_label(method: str, sparsity: Any, pattern: Any) -> str:
    """'Dense (Baseline)', 'Magnitude 30%', 'Wanda 2:4'."""
    label = sparsity_label(sparsity, pattern, method)
    if label == "Dense":
        return "Dense (Baseline)"
    return f"{method_label(method)} {label}"


def _method_rank(method: str) -> int:
    order = list(METHOD_NAMES)
    return order.index(method) if method in order else len(order)


def sparsity_key(sparsity: Any, pattern: Any, method: Any = None) -> tuple:
    """Sort key: dense first, then by pruned fraction, unstructured before N:M of equal fraction."""
    dense = pattern == "dense" or method == "dense"
    return (not dense, sparsity_fraction(sparsity, pattern), is_nm(pattern), str(pattern))


def _dataset_key(dataset: str) -> tuple:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER),
            dataset)


def task_key(task: str) -> tuple:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """A run's parameters other than model/method/sparsity, what was measured and where it ran."""
    keys = sorted(k for k in spec if k not in _NOT_SETTINGS)
    return {k: _short(spec[k]) for k in keys if not _blank(spec[k])}


def settings(spec: Mapping[str, Any]) -> str:
    """The settings as text: 'alpha=0.1, seqlen=4096'."""
    return ", ".join(f"{k}={v}" for k, v in settings_of(spec).items())


def _blank(value: Any) -> bool:
    return value in ({}, [], "") or _isna_safe(value)


def spec_summary(spec: Mapping[str, Any]) -> str:
    """Every spec entry but model and method, for hover text: 'sparsity=0.5, seqlen=4096'."""
    keys = sorted(k for k in spec if k not in ("model", "method", "source", "ref"))
    return ", ".join(f"{k}={_short(spec[k])}" for k in keys if not _isna_safe(spec[k]))


def _isna_safe(value: Any) -> bool:
    return not isinstance(value, (list, dict)) and _isna(value)


def parse_spec(spec: Any) -> dict[str, Any]:
    """A run's spec as a dict (the store returns JSON text)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if _isna_safe(spec) or not str(spec).strip():
        return {}
    try:
        parsed = json.loads(str(spec))
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def params_label(params: Any) -> str:
    """A search configuration as the seed prints it: '[0.15, 0.85, 0.5, 100]'."""
    if _isna_safe(params):
        return ""
    values = params if isinstance(params, list) else json.loads(str(params))
    return "[" + ", ".join(_short(v) for v in values) + "]"


# -- loading and preparing store frames ----------------------------------------------------------
def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``Store.metrics`` with the spec parsed and the labels every table uses added.

    Only finished runs are kept ('done'); 'group' is the source of a published row and
    ``OWN_GROUP`` for an own run: numbers are only compared within one group.  Each label is
    worked out once per distinct value (a run's rows share one parsed spec dict: read only).
    """
    df = frame.copy()
    if "run_status" in df:
        df = df[df["run_status"].isna() | (df["run_status"] == "done")]
    df = df.reset_index(drop=True).astype({c: object for c in df.columns
                                           if isinstance(df[c].dtype, pd.StringDtype)})
    raw = df["spec"] if "spec" in df else pd.Series([None] * len(df), index=df.index)
    keys = [s if isinstance(s, str) or s is None else json.dumps(s, sort_keys=True, default=str)
            for s in raw]
    parsed = {key: parse_spec(key) for key in dict.fromkeys(keys)}
    specs = [parsed[key] for key in keys]
    df["spec"] = pd.Series(specs, index=df.index, dtype=object)
    origin = df.get("origin", pd.Series(["own"] * len(df), index=df.index))
    source = df.get("source", pd.Series([None] * len(df), index=df.index))
    df["group"] = per_value(lambda o, s: s if o == "published" and isinstance(s, str) and s
                            else OWN_GROUP, origin, source)
    df["origin_label"] = per_value(lambda o: ORIGIN_NAMES.get(o, str(o)), origin)
    df["source_label"] = per_value(lambda s: s if isinstance(s, str) and s else "", source)
    if "method" in df:
        df["method_label"] = per_value(method_label, df["method"])
        df["sparsity_label"] = per_value(sparsity_label, df["sparsity"], df["pattern"],
                                         df["method"])
        df["dense"] = ((df["pattern"] == "dense") | (df["method"] == "dense")).astype(bool)
    by_key = {key: (settings(spec), spec.get("table") or "") for key, spec in parsed.items()}
    df["settings"] = [by_key[key][0] for key in keys]
    df["table"] = [by_key[key][1] for key in keys]
    for key, column in SETTING_COLUMNS.items():  # frames not read from the store
        if column not in df:
            values = {k: setting_value(spec.get(key)) for k, spec in parsed.items()}
            df[column] = pd.Series([values[k] for k in keys], index=df.index, dtype=object)
    return df


def per_value(compute: Callable[..., T], *columns: Iterable[Any]) -> list[T]:
    """``compute(*values)`` for each row of ``columns``, worked out once per distinct values."""
    done: dict[tuple, T] = {}
    out = []
    for values in zip(*columns, strict=True):
        if values not in done:
            done[values] = compute(*values)
        out.append(done[values])
    return out


def session_store(state: MutableMapping[str, Any]) -> Store:
    """The store of this browser session, opened once per session and path: the schema created
    or migrated, then the published figures imported when they are new or changed (the explicit
    start-up step ``published.sync``; a cheap check when nothing changed).

    ``state`` is ``st.session_state``; raises ``StoreError`` when the file cannot be used.
    """
    from core import config
    from core.store import published
    from core.store.db import Store

    store = state.get("store")
    if store is None or store.path != config.db_path():
        store = Store().init()
        published.sync(store)
        state["store"] = store
    return store


def load_metrics(store: Store, kind: str) -> pd.DataFrame:
    """Prepared metric rows of one kind ('perplexity', 'zero_shot', 'task', 'activation' ...)."""
    return prepare(store.metrics(kind))


def load_search_trials(store: Store) -> pd.DataFrame:
    """Search trials with their run's model, source and spec (task, metric, goal)."""
    frame = store.frame(
        """SELECT r.id AS run_id, r.origin, r.source, r.model, r.spec, r.status AS run_status,
                  t.trial, t.label, t.params, t.levels, t.actual_sparsity, t.metric, t.value,
                  t.raw, t.note
           FROM search_trials t JOIN runs r ON r.id = t.run_id
           ORDER BY r.id, t.trial""")
    df = prepare(frame)
    df["task"] = [s.get("task", "") for s in df["spec"]]
    df["goal"] = [s.get("goal") for s in df["spec"]]
    return df


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Number of runs by origin and source (own runs: by status), for the overview page."""
    if runs.empty:
        return pd.DataFrame(columns=["Origin", "Source", "Runs"])
    df = runs.assign(
        Origin=[ORIGIN_NAMES.get(o, o) for o in runs["origin"]],
        Source=[s if o == "published" and isinstance(s, str) and s else f"{OWN_GROUP} ({st})"
                for o, s, st in zip(runs["origin"], runs["source"], runs["status"], strict=True)])
    counts = df.groupby(["Origin", "Source"]).size().reset_index(name="Runs")
    return counts.sort_values(["Origin", "Source"], key=lambda c: c.str.lower()
                              ).reset_index(drop=True)


# -- filters -------------------------------------------------------------------------------------
def choices(rows: pd.DataFrame, column: str) -> list[str]:
    """The distinct values of a column, sorted, for a filter widget."""
    if rows.empty or column not in rows:
        return []
    values = {str(v) for v in rows[column] if not _isna_safe(v) and str(v)}
    if column == "method":
        return sorted(values, key=lambda m: (_method_rank(m), m))
    if column == "dataset":
        return sorted(values, key=_dataset_key)
    return sorted(values, key=lambda v: (v != OWN_GROUP, v.lower()))


def sparsity_levels(rows: pd.DataFrame) -> list[str]:
    """The sparsity labels of the pruned rows, from least to most pruned ('30%', '2:4' ...)."""
    if rows.empty:
        return []
    pruned = rows[~rows["dense"].astype(bool)]
    keys = {label: sparsity_key(s, p) for label, s, p in
            zip(pruned["sparsity_label"], pruned["sparsity"], pruned["pattern"], strict=True)}
    return sorted(keys, key=keys.__getitem__)


def default_choice(rows: pd.DataFrame, column: str) -> str | None:
    """The value to preselect: the most frequent among own runs, else among all rows."""
    if rows.empty or column not in rows:
        return None
    own = rows[rows["origin"] == "own"] if "origin" in rows else rows.iloc[0:0]
    pool = own if not own.empty else rows
    return str(pool[column].astype(str).value_counts().index[0])


def filter_rows(rows: pd.DataFrame, *, models: Iterable[str] | None = None,
                methods: Iterable[str] | None = None, groups: Iterable[str] | None = None,
                origins: Iterable[str] | None = None,
                datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """Keep the rows whose model, method, group (source), origin and dataset are selected.

    ``None`` means no filter on that column; an empty selection keeps nothing.  Dense rows are
    kept whenever their model is kept, so that every pruned row keeps its baseline.
    """
    keep = pd.Series(True, index=rows.index)
    for column, selected in (("model", models), ("group", groups), ("origin", origins),
                             ("dataset", datasets)):
        if selected is not None and column in rows:
            keep &= rows[column].isin(list(selected))
    if methods is not None and "method" in rows:
        wanted = rows["method"].isin(list(methods))
        if "dense" in rows:
            wanted |= rows["dense"].astype(bool)
        keep &= wanted
    return rows[keep]


# -- helpers shared by the builders --------------------------------------------------------------
def relative_change(value: float, baseline: float) -> float:
    """Relative change in percent: (value - baseline) / baseline x 100."""
    return (value - baseline) / baseline * 100.0


def percent_of(value: float, reference: float) -> float:
    """value as a percentage of reference."""
    return value / reference * 100.0


def _cell_text(status: Any, missing: str = MISSING) -> str | None:
    if status == "diverged":
        return DIVERGED
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


def dedupe_published(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop a published number printed again, identically, in another table of the same source
    (e.g. seed 000 repeats the dense scores in each per-task table); own runs are all kept."""
    if rows.empty:
        return rows
    keys = ["group", "model", "method", "pattern", "sparsity", "settings", "kind", "dataset",
            "metric", "value", "status"]
    published = rows[rows["origin"] == "published"]
    dupes = published[published[keys].astype(str).duplicated(keep="first")]
    return rows.drop(index=dupes.index)


def latest_runs(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per key: the most recent run (highest id)."""
    return rows.sort_values("run_id").drop_duplicates(list(keys), keep="last")


def _sort_rows(rows: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    if rows.empty:
        return rows
    keyed = rows.assign(
        _group_key=per_value(lambda g: (g != OWN_GROUP, g.lower()), rows["group"]),
        _sparsity_key=per_value(sparsity_key, rows["sparsity"], rows["pattern"], rows["method"]),
        _method_key=per_value(_method_rank, rows["method"]),
    )
    order = ["_group_key", *first, "_sparsity_key", "_method_key", "run_id"]
    return keyed.sort_values(order, key=_sortable).drop(
        columns=["_group_key", "_sparsity_key", "_method_key"])


def _sortable(column: pd.Series) -> pd.Series:
    if column.name == "dataset":
        return column.map(_dataset_key)
    if column.name == "model":
        return column.str.lower()
    return column


def _setting(spec: Mapping[str, Any], key: str) -> Any:
    """A spec value normalised for comparison (4.0 == 4, '' == missing)."""
    value = spec.get(key)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if value == "" else value


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


# -- (a) perplexity: method x sparsity -----------------------------------------------------------
PPL_COLUMNS = ["Model", "Dataset", "Method", "PPL", "Δ from dense", "Origin", "Source", "Run",
               "Settings", "Note"]


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
    computed = ~(status == "diverged") & ~dense & ~np.isnan(value) & has & ~np.isnan(base_value)
    delta_text = np.select([status == "diverged", dense, computed], [DIVERGED, BASELINE, None],
                           default="").astype(object)
    frame = pd.DataFrame({
        "Model": df["model"].to_numpy(dtype=object),
        "Dataset": per_value(dataset_name, df["dataset"]),
        "Method": per_value(row_label, df["method"], df["sparsity"], df["pattern"]),
        "PPL": value, TEXT + "PPL": per_value(_cell_text, status),
        "Δ from dense": np.where(computed, (value - base_value) / base_value * 100.0, np.nan),
        TEXT + "Δ from dense": delta_text,
        "Origin": df["origin_label"].to_numpy(), "Source": df["source_label"].to_numpy(),
        "Run": df["run_id"].to_numpy(), "Settings": df["settings"].to_numpy(),
        "Note": _ppl_notes(df, value, has, base_value, base_run),
        "_status": status, "_baseline_run": base_run, "_method": df["method"].to_numpy(),
        "_spec": df["spec"].to_numpy(),  # hover text: charts.hover_text formats it
    })
    return Table(frame, _ppl_formats())


def _values(df: pd.DataFrame) -> np.ndarray:
    """The number of each 'ok' row, NaN otherwise (``_value`` on a whole frame)."""
    ok = (df["status"] == "ok").to_numpy(dtype=bool) & df["value"].notna().to_numpy()
    return np.where(ok, df["value"].to_numpy(dtype=float, na_value=np.nan), np.nan)


def _ppl_notes(df: pd.DataFrame, value: np.ndarray, has: np.ndarray, base_value: np.ndarray,
               base_run: np.ndarray) -> list[str]:
    """Each row's note, with why Δ is blank where it has a number but no usable baseline."""
    notes = [_join(n) for n in df["note"]]
    asks = (~(df["status"] == "diverged").to_numpy() & ~df["dense"].to_numpy(dtype=bool)
            & ~np.isnan(value) & ~(has & ~np.isnan(base_value)))
    if asks.any():
        needed = np.flatnonzero(asks | df["dense"].to_numpy(dtype=bool))
        columns = ["run_id", "model", "dataset", "metric", "group", "dense", "spec", "note"]
        records = dict(zip(needed, df[columns].iloc[needed].to_dict("records"), strict=True))
        why = _NoBaseline(list(records.values()), _base_key, PPL_SETTING_KEYS)
        for i in np.flatnonzero(asks):
            reason = (why.perplexity(records[i]) if not has[i] else
                      f"the dense baseline (run {int(base_run[i])}) has no value: "
                      "Δ not computed")
            notes[i] = _join(reason, records[i].get("note"))
    return notes


def _ppl_formats() -> dict[str, str]:
    return {"PPL": "ppl", "Δ from dense": "delta", "Run": "int"}


def _base_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["model"], rec["dataset"], rec["metric"], rec["group"])


# -- (b) dataset x sparsity grid (seed 004) ------------------------------------------------------
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
    df = df.assign(_value=_values(df), _text=per_value(_cell_text, df["status"]), _here=True)

    def grid(values: str) -> pd.DataFrame:
        return df.pivot(index="_row", columns="_col", values=values).reindex(
            index=row_order, columns=col_order)

    numbers, texts, here = grid("_value"), grid("_text"), grid("_here")
    frame = pd.DataFrame({"Method": row_order})
    formats = {}
    for col in col_order:
        frame[col] = numbers[col].to_numpy(dtype=float, na_value=np.nan)
        frame[TEXT + col] = [t if h else "" for t, h in
                             zip(texts[col].to_numpy(dtype=object), here[col].notna(),
                                 strict=True)]
        formats[col] = "ppl"
    notes = [f"{model} · {group}" + (f" · {table}" if table else "") +
             f" · {metric_label(metric)}; rows are the latest run of each method."]
    return Table(frame, formats, notes)


def grid_row_labels(df: pd.DataFrame) -> list[str]:
    """Method label, plus the settings that differ between runs of that method (ablations)."""
    labels = []
    varying: dict[str, list[str]] = {}
    found = {id(spec): settings_of(spec) for spec in df["spec"]}  # rows of a run share a spec
    for method, part in df.groupby("method"):
        runs = [found[id(spec)] for spec in part["spec"]]
        keys = sorted({k for f in runs for k in f})
        varying[method] = [k for k in keys if len({f.get(k) for f in runs}) > 1]
    for method, spec in zip(df["method"], df["spec"], strict=True):
        values = found[id(spec)]
        extra = ", ".join(f"{k}={values.get(k, '—')}" for k in varying[method])
        labels.append(method_label(method) + (f" ({extra})" if extra else ""))
    return labels


def _grid_columns(df: pd.DataFrame) -> list[str]:
    keyed = {c: (sparsity_key(s, p, m), _dataset_key(d)) for c, s, p, m, d in
             zip(df["_col"], df["sparsity"], df["pattern"], df["method"], df["dataset"],
                 strict=True)}
    return sorted(keyed, key=keyed.__getitem__)


def natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside a text by value: 'beta=5' before 'beta=10'."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def _grid_rows(df: pd.DataFrame) -> list[str]:
    keyed = {r: (not d, _method_rank(m), natural_key(r)) for r, m, d in
             zip(df["_row"], df["method"], df["dense"], strict=True)}
    return sorted(keyed, key=keyed.__getitem__)


def timing_table(rows: pd.DataFrame, metric: str = "prune_seconds") -> Table:
    """Pruning time per run (kind 'timing', metric ``metric``), seconds as stored."""
    cols = ["Model", "Method", "Time (s)", "Origin", "Source", "Run", "Settings", "Note"]
    formats = {"Time (s)": "ppl", "Run": "int"}
    df = rows[(rows["kind"] == "timing") & (rows["metric"] == metric)] if not rows.empty else rows
    if df.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    df = _sort_rows(dedupe_published(df), ["model"])
    frame = pd.DataFrame({
        "Model": df["model"].to_numpy(),
        "Method": [row_label(m, s, p) for m, s, p in
                   zip(df["method"], df["sparsity"], df["pattern"], strict=True)],
        "Time (s)": [_value(r) for r in df.to_dict("records")],
        TEXT + "Time (s)": [_cell_text(st) for st in df["status"]],
        "Origin": df["origin_label"].to_numpy(), "Source": df["source_label"].to_numpy(),
        "Run": df["run_id"].to_numpy(), "Settings": df["settings"].to_numpy(),
        "Note": [_join(n) for n in df["note"]],
    })
    return Table(frame, formats)


# -- (c) zero-shot -------------------------------------------------------------------------------
ZS_COLUMNS = ["Model", "Method", "Tasks", "Accuracy", "Retention", "Evaluation", "Origin",
              "Source", "Run", "Baseline run", "Note"]
NOT_COUNTED = ("Failed or missing tasks are marked in the per-task tables (the error in the Note "
               "column) and are not counted in averages, retention or drops.")
OWN_ZS_BASELINE = ("Own runs are compared only with a dense run of the same model evaluated with "
                   "the same few-shot count, example limit and dtype (and, where possible, the "
                   "same tasks).")


def zero_shot_scores(rows: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """One row per run and task: ``metric``, else acc / acc_norm when the task has only that.

    A task that failed is one row with status 'missing' and a note 'task failed: ...'.
    """
    if rows.empty:
        return rows
    df = rows[rows["kind"] == "zero_shot"]
    rank = {metric: 0, "acc": 1, "acc_norm": 2}
    df = df[df["metric"].isin(rank)]
    df = df.assign(_rank=df["metric"].map(rank)).sort_values(["run_id", "_rank"])
    df = df.drop_duplicates(["run_id", "dataset"]).drop(columns="_rank")
    return _drop_repeated_runs(df)


def _drop_repeated_runs(scores: pd.DataFrame) -> pd.DataFrame:
    """Drop published runs whose every score repeats an earlier run of the same source."""
    kept = dedupe_published(scores)
    counts = scores.groupby("run_id").size()
    left = kept.groupby("run_id").size().reindex(counts.index, fill_value=0)
    partial = left[(left > 0) & (left < counts)].index
    return pd.concat([kept, scores[scores["run_id"].isin(partial)].drop(index=kept.index,
                                                                          errors="ignore")]
                     ).sort_values(["run_id"], kind="stable")


def is_failed(status: Any, note: Any) -> bool:
    """A zero-shot task that could not be evaluated (lm-eval raised): stored as 'missing'."""
    return status == "missing" and isinstance(note, str) and note.startswith(FAILED_PREFIX)


def zs_cell_text(status: Any, note: Any) -> str | None:
    """The word shown instead of a score: 'failed', 'no value', 'diverged' (None: a number)."""
    if status == "diverged":
        return DIVERGED
    if is_failed(status, note):
        return FAILED
    if status != "ok":
        return NO_VALUE
    return None


def zs_evaluation_label(spec: Mapping[str, Any]) -> str:
    """An own run's zero-shot settings: '0-shot, limit 40, float32' ('' for published rows)."""
    if not any(k in spec for k in ("num_fewshot", "zs_limit")):
        return ""
    limit = _setting(spec, "zs_limit")
    text = f"{_setting(spec, 'num_fewshot') or 0}-shot, "
    text += f"limit {limit}" if limit is not None else "all examples"
    dtype = _setting(spec, "dtype")
    return text + (f", {dtype}" if dtype else "")


def zs_evaluations(rows: pd.DataFrame, model: str | None = None) -> list[str]:
    """The distinct zero-shot settings of own runs (of ``model``), most used first."""
    df = rows[(rows["group"] == OWN_GROUP) & (rows["kind"] == "zero_shot")] if not rows.empty \
        else rows
    if model is not None and not df.empty:
        df = df[df["model"] == model]
    if df.empty:
        return []
    labels = pd.Series([zs_evaluation_label(s) for s in df.drop_duplicates("run_id")["spec"]])
    labels = labels[labels != ""]
    return list(labels.value_counts(sort=True).index)


@dataclass
class _RunScores:
    """The tasks a zero-shot run attempted, its 'ok' scores and its failed tasks."""

    attempted: dict[int, set[str]]
    values: dict[int, dict[str, float]]
    scores: pd.DataFrame  # the per-task rows they come from

    @classmethod
    def of(cls, scores: pd.DataFrame) -> _RunScores:
        attempted: dict[int, set[str]] = {}
        values: dict[int, dict[str, float]] = {}
        ok = _values(scores)
        for rid, task, value in zip(scores["run_id"], scores["dataset"], ok, strict=True):
            attempted.setdefault(rid, set()).add(task)
            scored = values.setdefault(rid, {})
            if value == value:
                scored[task] = float(value)
        return cls(attempted, values, scores)


_NO_BASE_COLUMNS = ["run_id", "model", "group", "dense", "spec"]


def _zs_baselines(scores: pd.DataFrame, runs: pd.DataFrame) -> tuple[dict[int, int], _NoBaseline]:
    """Each run's dense baseline run (``baselines.zero_shot_baselines``) and, for the runs
    without one, why."""
    dense = runs[runs["dense"].astype(bool)].drop_duplicates("run_id")
    return (baselines.zero_shot_baselines(scores, runs),
            _NoBaseline(dense[_NO_BASE_COLUMNS].to_dict("records"),
                        lambda r: (r["model"], r["group"]), ZS_SETTING_KEYS))


def zero_shot_table(rows: pd.DataFrame, metric: str = "acc") -> Table:
    """Average accuracy over each run's scored tasks and retention = average / dense average
    (same model and group, same evaluation settings for own runs, over the tasks both have)."""
    scores = zero_shot_scores(rows, metric)
    formats = {"Accuracy": "pct", "Retention": "pct", "Tasks": "int", "Run": "int",
               "Baseline run": "int"}
    if scores.empty:
        return Table(pd.DataFrame(columns=ZS_COLUMNS), formats)
    runs_frame = _sort_rows(scores.drop_duplicates("run_id"), ["model"])
    runs = _RunScores.of(scores)
    failed_rows = scores[[is_failed(st, n) for st, n in
                          zip(scores["status"], scores["note"], strict=True)]]
    failed = failed_rows.groupby("run_id")["dataset"].agg(lambda t: sorted(t, key=task_key)
                                                         ).to_dict()
    chosen, why = _zs_baselines(scores, runs_frame)
    columns = [*_NO_BASE_COLUMNS, "method", "sparsity", "pattern", "origin_label",
               "source_label"]
    out = [_zs_record(rec, runs, failed.get(rec["run_id"], []), chosen.get(rec["run_id"]),
                      "" if rec["run_id"] in chosen else why.zero_shot(rec))
           for rec in runs_frame[columns].to_dict("records")]
    notes = [_task_note(scores, metric), NOT_COUNTED]
    if (runs_frame["group"] == OWN_GROUP).any():
        notes.append(OWN_ZS_BASELINE)
    return Table(pd.DataFrame(out), formats, notes)


def average(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


def retention(scores: Mapping[str, float], dense: Mapping[str, float]) -> tuple[float, int]:
    """Pruned average / dense average over the tasks both have; returns (ratio, tasks used)."""
    common = sorted(scores.keys() & dense.keys())
    if not common:
        return math.nan, 0
    base = average(dense[t] for t in common)
    if not base:
        return math.nan, len(common)
    return average(scores[t] for t in common) / base, len(common)


def _zs_record(rec: Mapping[str, Any], runs: _RunScores, failed: list[str],
               base: int | None, why: str) -> dict[str, Any]:
    scores = runs.values[rec["run_id"]]
    n_tasks = len(runs.attempted[rec["run_id"]])
    notes = []
    if len(scores) < n_tasks:
        detail = f"{', '.join(failed)} failed" if failed else "others have no value"
        if failed and len(failed) < n_tasks - len(scores):
            detail += ", others have no value"
        notes.append(f"average over {len(scores)} of {n_tasks} tasks ({detail}; not counted)")
    dense = runs.values.get(base, {}) if base is not None else None
    ret, used = retention(scores, dense) if dense is not None else (math.nan, 0)
    if base is None:
        notes.append(why)
    elif scores and used < max(len(scores), len(dense)):
        notes.append(f"retention over the {used} tasks shared with dense run {base}")
    return {
        "Model": rec["model"], "Method": row_label(rec["method"], rec["sparsity"], rec["pattern"]),
        "Tasks": len(scores), "Accuracy": average(scores.values()),
        TEXT + "Accuracy": None if scores else MISSING,
        "Retention": ret, TEXT + "Retention": None if not math.isnan(ret) else "",
        "Evaluation": zs_evaluation_label(rec["spec"]),
        "Origin": rec["origin_label"], "Source": rec["source_label"], "Run": rec["run_id"],
        "Baseline run": base if base is not None else math.nan,
        "Note": _join(*notes), "_method": rec["method"], "_spec": rec["spec"],
    }


def _task_note(scores: pd.DataFrame, metric: str) -> str:
    tasks = sorted(set(scores["dataset"]), key=task_key)
    scored = sorted({t for t, v, st in zip(scores["dataset"], scores["value"], scores["status"],
                                           strict=True) if st == "ok" and not _isna(v)},
                    key=task_key)
    note = (f"Average across {len(scored)} tasks: {', '.join(scored)} ({metric_label(metric)}; "
            "computed from the per-task scores).")
    unscored = [t for t in tasks if t not in scored]
    if unscored:
        note += f" No run shown has a score for {', '.join(unscored)}."
    return note


LONG_EXTRA = ["column", "role", "baseline_run", "baseline_note"]


def per_task_long(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
                  groups: Iterable[str] | None = None, evaluation: str | None = None
                  ) -> pd.DataFrame:
    """Per-task scores of one model at one sparsity label and of their dense baselines.

    Own runs: the latest run of each method (whole runs, never mixed), restricted to the
    zero-shot settings ``evaluation`` when given, each with the dense run
    ``baselines.zero_shot_baselines`` picks.
    Published: the latest score per method, group and task, and the group's dense scores.
    Adds 'column' (the per-task table's column label), 'role' ('dense' / 'pruned') and, on pruned
    rows, 'baseline_run' (the dense run compared with; NaN when none) and 'baseline_note'.
    """
    scores = zero_shot_scores(rows, metric)
    if scores.empty:
        return scores.assign(**{c: [] for c in LONG_EXTRA})
    df = scores[scores["model"] == model]
    if groups is not None:
        df = df[df["group"].isin(list(groups))]
    if evaluation is not None:
        df = df[(df["group"] != OWN_GROUP)
                | pd.Series([zs_evaluation_label(s) == evaluation for s in df["spec"]],
                            index=df.index, dtype=bool)]
    pruned = df[~df["dense"].astype(bool) & (df["sparsity_label"] == sparsity)]
    if pruned.empty:
        return df.iloc[0:0].assign(**{c: [] for c in LONG_EXTRA})
    runs = _RunScores.of(df)
    parts: list[pd.DataFrame] = []
    for group, gpruned in pruned.groupby("group", sort=False):
        gdense = df[df["dense"].astype(bool) & (df["group"] == group)]
        if group == OWN_GROUP:
            parts += _own_per_task(gpruned, gdense, runs)
        else:
            parts += _published_per_task(gpruned, gdense)
    long = _sort_rows(pd.concat(parts, ignore_index=True), [])
    several = long["group"].nunique() > 1
    own_dense = long[(long["role"] == "dense") & (long["group"] == OWN_GROUP)]
    several_dense = own_dense["run_id"].nunique() > 1
    long["column"] = [_column_label(r, several, several_dense) for r in long.to_dict("records")]
    return long.reset_index(drop=True)


def _own_per_task(pruned: pd.DataFrame, dense: pd.DataFrame, runs: _RunScores
                  ) -> list[pd.DataFrame]:
    latest = pruned.groupby("method")["run_id"].max()
    chosen = pruned[pruned["run_id"].isin(latest)]
    firsts = chosen.drop_duplicates("run_id")
    found, why = _zs_baselines(runs.scores, pd.concat([firsts, dense]))
    parts, bases = [], {}
    for rid, part in chosen.groupby("run_id", sort=False):
        base = found.get(rid)
        parts.append(part.assign(role="pruned",
                                 baseline_run=base if base is not None else math.nan,
                                 baseline_note="" if base is not None else
                                 why.zero_shot(part.iloc[0].to_dict())))
        if base is not None:
            bases[base] = True
    parts += [dense[dense["run_id"] == b].assign(role="dense", baseline_run=b, baseline_note="")
              for b in bases]
    return parts


def _published_per_task(pruned: pd.DataFrame, dense: pd.DataFrame) -> list[pd.DataFrame]:
    chosen = latest_runs(pruned, ["method", "sparsity_label", "group", "dataset"])
    base = latest_runs(dense, ["dataset"])
    by_task = dict(zip(base["dataset"], base["run_id"], strict=True))
    group = chosen["group"].iloc[0]
    return [chosen.assign(role="pruned",
                          baseline_run=[by_task.get(t, math.nan) for t in chosen["dataset"]],
                          baseline_note=["" if t in by_task else
                                         f"no dense score for {t} in {group}"
                                         for t in chosen["dataset"]]),
            base.assign(role="dense", baseline_run=base["run_id"], baseline_note="")]


def _column_label(rec: Mapping[str, Any], several_groups: bool, several_dense: bool) -> str:
    label = method_label(rec["method"])
    if rec["role"] == "dense" and rec["group"] == OWN_GROUP and several_dense:
        label += f" (run {rec['run_id']})"
    return label + (f" ({rec['group']})" if several_groups else "")


def per_task_table(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
                   groups: Iterable[str] | None = None, evaluation: str | None = None) -> Table:
    """Seed 000's per-task breakdown: rows = task, columns = Dense and each method; a failed task
    reads 'failed' with lm-eval's error in the Note column."""
    long = per_task_long(rows, model, sparsity, metric, groups, evaluation)
    if long.empty:
        return Table(pd.DataFrame(columns=["Task"]))
    columns = list(dict.fromkeys(long["column"]))
    tasks = sorted(set(long["dataset"]), key=task_key)
    frame = pd.DataFrame({"Task": tasks})
    notes: dict[str, dict[str, list[str]]] = {t: {} for t in tasks}  # task -> note -> columns
    for col in columns:
        cells = long[long["column"] == col].drop_duplicates("dataset", keep="last")
        cells = cells.set_index("dataset")
        frame[col] = [_value(cells.loc[t]) if t in cells.index else math.nan for t in tasks]
        frame[TEXT + col] = [zs_cell_text(cells.loc[t, "status"], cells.loc[t, "note"])
                             if t in cells.index else NO_VALUE for t in tasks]
        for t in tasks:
            if t in cells.index:
                note = _row_note(cells.loc[t])
                if note:
                    notes[t].setdefault(note, []).append(col)
    frame["Note"] = [_join(*(f"{', '.join(cols)}: {note}" for note, cols in notes[t].items()))
                     for t in tasks]
    return Table(frame, dict.fromkeys(columns, "pct"),
                 [f"{model}, {sparsity} sparsity, {metric_label(metric)} per task.",
                  NOT_COUNTED])


def _row_note(rec: Mapping[str, Any]) -> str:
    """A score's note worth showing: a failure, a missing value, or a published remark (own
    runs' 'lm-eval <version>' provenance is left out)."""
    note = rec.get("note")
    if not isinstance(note, str) or not note:
        return ""
    if rec.get("status") != "ok" or rec.get("origin") == "published":
        return note
    return ""


DROP_COLUMNS = ["Task", "Method", "Score", "Dense", "Drop (points)", "Relative drop", "Source",
                "Run", "Baseline run", "Note"]
AVERAGE_ROW = "Average"


def drop_table(rows: pd.DataFrame, model: str, sparsity: str, metric: str = "acc",
               groups: Iterable[str] | None = None, evaluation: str | None = None) -> Table:
    """Per-task drop from dense: for each task and method the score, the drop in points
    ((pruned - dense) x 100) and the relative drop in % ((pruned - dense) / dense x 100), sign kept
    (negative = worse); then each method's average over the tasks it shares with dense."""
    formats = {"Score": "pct", "Dense": "pct", "Drop (points)": "points",
               "Relative drop": "delta", "Run": "int", "Baseline run": "int"}
    long = per_task_long(rows, model, sparsity, metric, groups, evaluation)
    if long.empty:
        return Table(pd.DataFrame(columns=DROP_COLUMNS), formats)
    dense = long[long["role"] == "dense"]
    dense_cells = {(r["run_id"], r["dataset"]): r for r in dense.to_dict("records")}
    pruned = long[long["role"] == "pruned"]
    out = []
    for column, part in pruned.groupby("column", sort=False):
        first = part.iloc[0].to_dict()
        by_task = {r["dataset"]: r for r in part.to_dict("records")}
        bases = {t: r["baseline_run"] for t, r in by_task.items()}
        if first["group"] == OWN_GROUP and not _isna(first["baseline_run"]):
            base_tasks = {t for (rid, t) in dense_cells if rid == first["baseline_run"]}
            bases.update({t: first["baseline_run"] for t in base_tasks})
        tasks = sorted(set(by_task) | {t for t, b in bases.items() if not _isna(b)}, key=task_key)
        pairs = []
        for task in tasks:
            rec = by_task.get(task)
            base = dense_cells.get((bases.get(task), task))
            out.append(_drop_record(task, column, first, rec, base))
            if rec is not None and base is not None:
                pairs.append((_value(rec), _value(base)))
        out.append(_drop_average(column, first, pairs, len(tasks)))
    frame = pd.DataFrame(out)
    order = {t: i for i, t in enumerate(sorted(set(frame["Task"]) - {AVERAGE_ROW},
                                               key=task_key))}
    order[AVERAGE_ROW] = len(order)
    frame = frame.assign(_order=frame["Task"].map(order)).sort_values(
        "_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    notes = [f"{model}, {sparsity} sparsity, {metric_label(metric)}. Drop = pruned − dense in "
             "percentage points; relative drop = (pruned − dense) / dense × 100; negative = "
             "worse than dense.",
             "Average rows: over the tasks both the run and its dense baseline scored; their "
             "relative drop equals retention − 100%.", NOT_COUNTED]
    if (pruned["group"] == OWN_GROUP).any():
        notes.append(OWN_ZS_BASELINE)
    return Table(frame, formats, notes)


def _drop_record(task: str, column: str, first: Mapping[str, Any], rec: Mapping[str, Any] | None,
                 base: Mapping[str, Any] | None) -> dict[str, Any]:
    score = _value(rec) if rec is not None else math.nan
    dense = _value(base) if base is not None else math.nan
    notes = []
    if rec is None:
        score_text = NO_VALUE
        notes.append(f"run {first['run_id']} did not evaluate {task}")
    else:
        score_text = zs_cell_text(rec["status"], rec["note"])
        notes.append(_row_note(rec))
    if base is not None:
        dense_text = zs_cell_text(base["status"], base["note"])
        if dense_text is not None:
            same = rec is not None and _row_note(base) == _row_note(rec)
            notes.append(f"dense {dense_text} too" if same
                         else f"dense: {_row_note(base) or dense_text}")
    else:
        dense_text = NO_VALUE
        if first["group"] != OWN_GROUP:
            notes.append(f"no dense score for {task} in {first['group']}")
        elif _isna(first["baseline_run"]):
            notes.append("no comparable dense run (see the Average row)")
        else:
            notes.append(f"dense run {int(first['baseline_run'])} did not evaluate {task}")
    drop, rel = _drops(score, dense)
    return {
        "Task": task, "Method": column_method(first, column), "Score": score,
        TEXT + "Score": score_text, "Dense": dense, TEXT + "Dense": dense_text,
        "Drop (points)": drop, TEXT + "Drop (points)": None if not math.isnan(drop) else "",
        "Relative drop": rel, TEXT + "Relative drop": None if not math.isnan(rel) else "",
        "Source": first["source_label"],
        "Run": rec["run_id"] if rec is not None else first["run_id"],
        "Baseline run": base["run_id"] if base is not None else math.nan,
        "Note": _join(*notes), "_column": column, "_method": first["method"],
        "_average": False, "_spec": spec_summary((rec or first)["spec"]),
    }


def column_method(first: Mapping[str, Any], column: str) -> str:
    """'Wanda 50%', plus the group when the column label names one."""
    label = row_label(first["method"], first["sparsity"], first["pattern"])
    suffix = column[len(method_label(first["method"])):]
    return label + suffix


def _drops(score: float, dense: float) -> tuple[float, float]:
    if math.isnan(score) or math.isnan(dense):
        return math.nan, math.nan
    drop = (score - dense) * 100.0
    return drop, relative_change(score, dense) if dense else math.nan


def _drop_average(column: str, first: Mapping[str, Any], pairs: list[tuple[float, float]],
                  n_tasks: int) -> dict[str, Any]:
    used = [(s, d) for s, d in pairs if not math.isnan(s) and not math.isnan(d)]
    score = average(s for s, _ in used)
    dense = average(d for _, d in used)
    drop, rel = _drops(score, dense)
    note = (f"over the {len(used)} of {n_tasks} tasks scored by both" if used
            else "no task scored by both the run and dense")
    if first["group"] == OWN_GROUP and _isna(first["baseline_run"]):
        note = first["baseline_note"]
    return {
        "Task": AVERAGE_ROW, "Method": column_method(first, column), "Score": score,
        TEXT + "Score": None if used else NO_VALUE, "Dense": dense,
        TEXT + "Dense": None if used else NO_VALUE,
        "Drop (points)": drop, TEXT + "Drop (points)": None if not math.isnan(drop) else "",
        "Relative drop": rel, TEXT + "Relative drop": None if not math.isnan(rel) else "",
        "Source": first["source_label"], "Run": first["run_id"],
        "Baseline run": first["baseline_run"] if first["group"] == OWN_GROUP else math.nan,
        "Note": note, "_column": column, "_method": first["method"], "_average": True,
        "_spec": spec_summary(first["spec"]),
    }


# -- (d) activation sparsity: search tables and final comparison --------------------------------
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
               "% of CoreInfer": "percent", "Run": "int"}
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


# -- (e) layer statistics (seed 002) ------------------------------------------------------------
LAYER_SUMMARY = (("mean", "Mean over blocks"), ("std", "Std over blocks"),
                 ("min", "Lowest block"), ("max", "Highest block"),
                 ("overall", "Overall (all prunable weights)"))


def load_layer_stats(store: Store, run_ids: list[int] | None = None) -> pd.DataFrame:
    """Layer statistics of finished runs (of ``run_ids`` only, when given) with their run's
    model, method, origin and spec."""
    return prepare(queries.layer_stat_rows(store, run_ids))


def load_layer_runs(store: Store) -> pd.DataFrame:
    """One row per finished run with layer statistics (``blocks``: how many blocks have a
    measured sparsity), for ``layer_runs`` and the filters without reading every layer row."""
    return prepare(queries.layer_stat_runs(store))


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
        f"{m} · {row_label(me, s, p)} · "
        + (f"own run {r}" if o == "own" else f"{g.split(' (')[0]} (run {r})")
        for m, me, s, p, o, g, r in zip(runs["model"], runs["method"], runs["sparsity"],
                                        runs["pattern"], runs["origin"], runs["group"],
                                        runs["run_id"], strict=True)]
    runs["_key"] = [(o != "own", -r if o == "own" else r)
                    for o, r in zip(runs["origin"], runs["run_id"], strict=True)]
    return runs.sort_values("_key")[cols].reset_index(drop=True)


def _run_stats(stats: pd.DataFrame, run_id: int) -> pd.DataFrame:
    return stats[stats["run_id"] == run_id] if not stats.empty else stats


def block_sparsity_table(stats: pd.DataFrame, run_id: int) -> Table:
    """Measured sparsity per block of one run, its gap to the target and the least / most pruned
    linear layer of the block (own runs store every linear)."""
    cols = ["Block", "Sparsity", "Δ from target (points)", "Linears", "Least pruned linear",
            "Most pruned linear"]
    formats = {"Block": "int", "Sparsity": "pct", "Δ from target (points)": "points",
               "Linears": "int"}
    df = _run_stats(stats, run_id)
    blocks = df[(df["layer"] == "block") & (df["stat"] == "sparsity")] if not df.empty else df
    if blocks.empty:
        return Table(pd.DataFrame(columns=cols), formats,
                     ["No per-block rows are stored for this run."])
    rec = df.iloc[0]
    target = sparsity_fraction(rec["sparsity"], rec["pattern"])
    linears = df[~df["layer"].isin(["block", "model"]) & (df["stat"] == "sparsity")]
    blocks = blocks.sort_values("block")
    out = []
    for b, value in zip(blocks["block"], blocks["value"], strict=True):
        mine = linears[linears["block"] == b].sort_values(["value", "layer"])
        out.append({
            "Block": int(b), "Sparsity": value,
            TEXT + "Sparsity": NO_VALUE if _isna(value) else None,
            "Δ from target (points)": (value - target) * 100 if not _isna(value) else math.nan,
            "Linears": len(mine), **_least_most(mine),
        })
    frame = pd.DataFrame(out)
    frame[TEXT + "Δ from target (points)"] = [
        None if not _isna(v) else "" for v in frame["Δ from target (points)"]]
    method = row_label(rec["method"], rec["sparsity"], rec["pattern"])
    notes = [f"Run {run_id}: {rec['model']}, {method}; target {target * 100:g}% of each block's "
             "prunable weights. Measured after pruning: the share of zero weights in the "
             "block's linear layers."]
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
    df = _run_stats(stats, run_id)
    if df.empty:
        return Table(pd.DataFrame(columns=cols), formats)
    stored = {r["stat"]: r for r in df[df["layer"] == "model"].to_dict("records")}
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
