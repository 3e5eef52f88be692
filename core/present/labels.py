"""Labels and formatting every table uses: the Table type, cell formats, method / sparsity /
dataset labels, sort keys and the settings text of a spec (no Streamlit here)."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from core.analysis.baselines import OWN_GROUP as OWN_GROUP  # one name everywhere (re-exported)

T = TypeVar("T")
TEXT = "_text:"  # prefix of the hidden column holding a cell's text in place of its number
DIVERGED = "diverged"
COLLAPSED = "collapsed"  # a perplexity at or above the vocabulary size (its value kept)
MISSING = "—"
NO_VALUE = "no value"
FAILED = "failed"
BASELINE = "baseline"
OPTIONAL_COLUMNS = ("Settings", "Evaluation", "Note", "95% interval", "95% interval (points)",
                    "PPL 95% interval", "Accuracy 95% interval", "Retention 95% interval",
                    "Δ 95% interval")
ORIGIN_NAMES = {"published": "Published", "own": "Own run"}
#: The origin filter's choices and the origins each keeps (None: no filter).
ORIGIN_FILTERS: dict[str, list[str] | None] = {
    "All": None, "Published": ["published"], "Own runs": ["own"]}
METHOD_NAMES = {
    "dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
    "sparsellm": "SparseLLM", "ria": "RIA", "coreinfer": "CoreInfer",
    "sparsity-levels": "Sparsity levels",
}
#: The pruning methods that read no calibration data (their ``needs_calibration`` is False; a
#: test keeps this equal to the method registry, which the pages do not import: it loads torch).
CALIBRATION_FREE = frozenset({"magnitude"})
DATASET_SHORT = {"wikitext2": "WT2", "ptb": "PTB", "c4": "C4"}
DATASET_TITLES = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}
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
FAILED_PREFIX = "task failed"
_NM = re.compile(r"(\d+):(\d+)")


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

    def display(self, full: bool = False, rows: slice | None = None) -> pd.DataFrame:
        """The table as strings, as shown on the page; ``full``: as exported, numbers with the
        precision of their source (up to ``EXPORT_DECIMALS`` decimals, see ``format_value``);
        ``rows``: only these rows (a page of a long table), formatted as in the whole table.

        Optional columns (Settings, Note) are left out when every cell of the table is blank.
        """
        out: dict[str, list[str]] = {}
        for column, kind, values, texts in self._cells(rows):
            out[column] = [text if isinstance(text, str) else format_value(value, kind, full)
                           for value, text in zip(values, texts, strict=True)]
        return pd.DataFrame(out, columns=list(out), dtype=object)

    def _cells(self, rows: slice | None = None) -> Iterator[tuple[str, str, Any, Any]]:
        """Each column shown (optional ones left out when blank): its name, format kind, and
        the numbers and texts of ``rows`` (all: None)."""
        part = self.frame if rows is None else self.frame.iloc[rows]
        for column in self.columns:
            kind = self._kind(column)
            if column in OPTIONAL_COLUMNS and self._blank(column, kind):
                continue
            texts = self.text(column).to_numpy(dtype=object)[_positions(rows, len(self.frame))]
            yield column, kind, part[column].to_numpy(dtype=object), texts

    def _export_decimals(self, column: str, kind: str) -> int | None:
        """One precision for a whole column of the CSV download: the most decimals that any
        of its numbers needs, 2 to ``EXPORT_DECIMALS`` for the two-decimal kinds ('82.5000'
        beside '43.3333', not '82.50%' beside '43.3333%'), up to ``SCORE_DECIMALS`` for
        scores; None for kinds of a fixed precision (counts, ids, sparsities)."""
        if kind in ("int", "run", "sparsity") or kind.startswith("fixed"):
            return None
        two = kind in TWO_DECIMAL_KINDS
        most = EXPORT_DECIMALS if two else SCORE_DECIMALS
        numbers = [float(v) * (100 if kind == "pct" else 1)
                   for v in pd.unique(self.frame[column].to_numpy(dtype=object))
                   if not _isna(v) and not isinstance(v, str) and math.isfinite(float(v))]
        needed = column_decimals([round(v, most) for v in numbers], most)
        return max(2, needed) if two else needed

    def for_scripts(self) -> pd.DataFrame:
        """The whole table as a script reads it (the CSV download): numbers as numbers, one
        precision per column, percentages in columns named '(%)', a diverged value as
        ``inf``; the words a cell shows instead of or beside its number ('failed',
        'baseline', '+6.00 pts (better)') go to a '<column> note' column beside it, the
        number (where there is one) staying in its column; published rows have no run id
        (their Source says where they come from)."""
        out: dict[str, list[Any]] = {}
        for column, kind, values, texts in self._cells():
            if kind == "text":
                out[column] = [t if isinstance(t, str) else format_value(v) for v, t in
                               zip(values, texts, strict=True)]
                continue
            places = self._export_decimals(column, kind)
            numbers = [script_number(v, kind, places) for v in values]
            out[script_column(column, kind)] = numbers
            words = [t if isinstance(t, str) else DIVERGED if numbers[i] == "inf" else ""
                     for i, t in enumerate(texts)]
            if any(words):
                out[f"{script_column(column, kind)} note"] = words
        return pd.DataFrame(out, columns=list(out), dtype=object)

    def _kind(self, column: str) -> str:
        """A column's format ('auto': the fewest decimals that show the whole column exactly)."""
        kind = self.formats.get(column, "text")
        if kind == "auto":
            return f"fixed{column_decimals(pd.unique(self.frame[column].to_numpy(dtype=object)))}"
        return kind

    def _blank(self, column: str, kind: str) -> bool:
        """Whether every cell of a column shows blank (each distinct cell checked once)."""
        cells: Iterable[tuple[Any, Any]] = list(zip(
            self.frame[column].to_numpy(dtype=object).tolist(),
            self.text(column).to_numpy(dtype=object).tolist(), strict=True))
        with contextlib.suppress(TypeError):  # a cell that cannot be hashed: check them all
            cells = dict.fromkeys(cells)
        return not any((t if isinstance(t, str) else format_value(v, kind)).strip()
                       for v, t in cells)


def _positions(rows: slice | None, length: int) -> slice:
    return slice(None) if rows is None else slice(*rows.indices(length))


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


#: Kinds shown at 2 decimals on the pages; exports give them up to ``EXPORT_DECIMALS``.
TWO_DECIMAL_KINDS = ("ppl", "delta", "pct", "percent", "points")
EXPORT_DECIMALS = 4
SCORE_DECIMALS = 6  # the most a score column of the CSV download keeps


#: The unit a script-readable column's name gains, by the kind of its numbers.
PERCENT_KINDS = ("pct", "delta", "percent")


def script_column(column: str, kind: str) -> str:
    """A column's name in the CSV download: 'Accuracy (%)' for percentages, 'Drop (points)'."""
    unit = "%" if kind in PERCENT_KINDS else "points" if kind == "points" else ""
    return f"{column} ({unit})" if unit and unit not in column else column


def script_number(value: Any, kind: str, places: int | None) -> str:
    """A cell of the CSV download: the number alone ('82.5000', '-15.00', '12', 'inf'),
    percentages in percent, '' where there is none (and for a published row's run id)."""
    if _isna(value):
        return ""
    number = float(value) * (100 if kind == "pct" else 1)
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if kind in ("int", "run"):
        return "" if kind == "run" and number < 0 else f"{number:.0f}"
    if places is not None:
        return f"{number:.{places}f}"
    if kind.startswith("fixed"):
        return f"{number:.{int(kind[5:] or 0)}f}"
    return f"{number:.3f}" if kind == "sparsity" else repr(round(number, SCORE_DECIMALS))


def format_value(value: Any, kind: str = "text", full: bool = False) -> str:
    """Format one cell: ppl, delta (already %), pct (fraction as %), percent (already %), points
    (percentage points, signed), run (an own run's id; nothing for a published row's), ...
    ``full`` (Markdown and LaTeX downloads): the two-decimal kinds keep up to
    ``EXPORT_DECIMALS`` decimals where the number has them (a published 6.4154 stays 6.4154,
    a published 6.42 stays 6.42)."""
    if _isna(value):
        return ""
    if kind == "text":
        return str(value)
    number = float(value)
    if math.isinf(number):
        return DIVERGED
    if kind.startswith("fixed"):
        return f"{number:.{int(kind[5:] or 0)}f}"
    if kind == "run":
        return f"{number:.0f}" if number >= 0 else ""
    d = 2
    if full and kind in TWO_DECIMAL_KINDS:
        shown = round(number * 100 if kind == "pct" else number, EXPORT_DECIMALS)
        d = max(2, column_decimals([shown], EXPORT_DECIMALS))
    formats = {
        "ppl": lambda v: f"{v:.{d}f}",
        "delta": lambda v: f"{v:+.{d}f}%" if round(v, d) != 0 else f"{0:.{d}f}%",
        "pct": lambda v: f"{v * 100:.{d}f}%",
        "percent": lambda v: f"{v:.{d}f}%",
        "points": lambda v: f"{v:+.{d}f}" if round(v, d) != 0 else f"{0:.{d}f}",
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


def run_reference(run_id: Any, source: Any = "", table: Any = "") -> str:
    """How a row's run is named in text: 'run 12' for an own run; a published figure (its id
    is internal, derived and negative) by ``published_name``."""
    try:
        number = int(run_id)
    except (TypeError, ValueError):
        return f"run {run_id}"
    return f"run {number}" if number >= 0 else published_name(source, table)


def published_name(source: Any, table: Any = "") -> str:
    """A published figure by its source and table: 'Wanda README, Table 3'."""
    where = str(source).split(" (")[0] if isinstance(source, str) and source else "published"
    return where + (f", {table}" if isinstance(table, str) and table else "")


def method_label(method: str) -> str:
    """'wanda' -> 'Wanda'; unknown names are kept as they are."""
    return METHOD_NAMES.get(str(method), str(method))


def metric_label(metric: str) -> str:
    return METRIC_NAMES.get(str(metric), str(metric))


def dataset_label(dataset: str) -> str:
    """Short dataset name used in column headers: wikitext2 -> WT2; a local file -> its name."""
    return DATASET_SHORT.get(str(dataset), dataset_name(dataset))


def dataset_title(dataset: str) -> str:
    """A dataset as a sentence names it: wikitext2 -> WikiText-2; a local file -> its name."""
    return DATASET_TITLES.get(str(dataset), short_name(dataset))


def short_name(source: str) -> str:
    """A text source or model as people say it: a path becomes its file or folder name."""
    text = str(source)
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return text.rstrip("/").rsplit("/", 1)[-1] or text
    return text


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
    """'Dense (Baseline)', 'Magnitude 30%', 'Wanda 2:4'; an activation run: 'CoreInfer'."""
    if pattern == "activation":
        return method_label(method)
    label = sparsity_label(sparsity, pattern, method)
    if label == "Dense":
        return "Dense (Baseline)"
    return f"{method_label(method)} {label}"


def record_label(rec: Mapping[str, Any]) -> str:
    """``run_label`` of a row's method, sparsity, pattern and variant columns."""
    return run_label(rec["method"], rec["sparsity"], rec["pattern"], rec.get("variant"))


def with_variant(label: str, variant: Any = None) -> str:
    """``label`` followed by a run's label words, when it has any: 'Wanda 50% · OWL'."""
    return f"{label} · {variant}" if isinstance(variant, str) and variant else label


def method_variant(method: str, variant: Any = None) -> str:
    """A method and the run's label words, for tables whose columns give the sparsity:
    'Wanda · OWL'."""
    return with_variant(method_label(method), variant)


def run_label(method: str, sparsity: Any, pattern: Any, variant: Any = None) -> str:
    """``row_label`` and the run's label words (``SpecModel.label_words``: what tells it apart
    from a default run of its method): 'Wanda 50% · OWL · blocks 0–12'."""
    return with_variant(row_label(method, sparsity, pattern), variant)


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


def by_identity(function: Callable[[Any], T], maxsize: int = 50_000) -> Callable[[Any], T]:
    """``function`` of one object remembered by the object's identity: for the spec dicts
    the prepared rows share (read only), worked out once per run for every later page and
    visit of this process.  The object is held with its value, so an id is never confused
    with a later object's; safe across the server's session threads."""
    kept: collections.OrderedDict[int, tuple[Any, T]] = collections.OrderedDict()
    lock = threading.Lock()

    @functools.wraps(function)
    def cached(value: Any) -> T:
        with lock:
            hit = kept.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        result = function(value)
        with lock:
            kept[id(value)] = (value, result)
            while len(kept) > maxsize:
                kept.popitem(last=False)
        return result
    return cached


def settings_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """A run's parameters other than model/method/sparsity, what was measured and where it ran."""
    keys = sorted(k for k in spec if k not in _NOT_SETTINGS)
    return {k: _short(spec[k]) for k in keys if not _blank(spec[k])}


#: ``settings_of`` once per prepared spec dict (read only) in this process.
shared_settings = by_identity(settings_of)


def settings(spec: Mapping[str, Any]) -> str:
    """The settings as text: 'alpha=0.1, seqlen=4096'."""
    return ", ".join(f"{k}={v}" for k, v in settings_of(spec).items())


def _blank(value: Any) -> bool:
    if isinstance(value, str):
        return value == ""
    if isinstance(value, list | dict):
        return not value
    return _isna(value)


def _setting(spec: Mapping[str, Any], key: str) -> Any:
    """A spec value normalised for comparison (4.0 == 4, '' == missing)."""
    value = spec.get(key)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if value == "" else value


def zs_evaluation_label(spec: Mapping[str, Any]) -> str:
    """An own run's zero-shot settings: '0-shot, limit 40, float32' ('auto dtype': the
    checkpoint's own; '' for published rows)."""
    if not any(k in spec for k in ("num_fewshot", "zs_limit")):
        return ""
    limit = _setting(spec, "zs_limit")
    text = f"{_setting(spec, 'num_fewshot') or 0}-shot, "
    text += f"limit {limit}" if limit is not None else "all examples"
    dtype = _setting(spec, "dtype")
    return text + (f", {'auto dtype' if dtype == 'auto' else dtype}" if dtype else "")


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


def natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside a text by value: 'beta=5' before 'beta=10'."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)
