"""Read models for the Launch and Runs pages: run list, progress, logs, form parsing.

No Streamlit here: the pages only lay out what these functions return.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core import config
from core.engine import devices
from core.present import tables
from core.present.labels import CALIBRATION_FREE
from core.runs import costs
from core.runs.progress import Estimate, Timing, estimate, stage_fraction
from core.store import meta, queries
from core.store.db import Store

#: Statuses in the order the summary line lists them.
STATUS_ORDER = ("running", "cancelling", "queued", "done", "failed", "cancelled")
ACTIVE = ("running", "cancelling")
FINISHED = ("done", "failed", "cancelled")
#: The run list's columns, as shown (Archived only while archived runs are listed).
#: The key results' number columns (``run_list.key_results``), after Method: a perplexity
#: per dataset, the mean zero-shot accuracy and its retention against dense (in %).
PPL_PREFIX, ZERO_SHOT, RETENTION = "PPL ", "Zero-shot avg", "Retention"
TASK_SCORE = "Task score"  # an activation or search run's mean task score
#: The key results come right after Method, so that they show at 1440 px.
COLUMNS = ["Run", "Name", "Status", "Model", "Method", "Progress", "Stage", "Duration",
           "Started", "Queued", "Tags", "Error", "Archived"]
ERROR_CHARS = 140


# -- progress ---------------------------------------------------------------------------------
#: The unit of a stage's steps by its name's first words, when the payload names none (an
#: older worker's).
OLD_UNITS = {"pruning": "block", "capturing block inputs": "block", "OWL outlier ratios": "block",
             "perplexity": "window", "zero-shot": "task", "task": "task"}


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int
    overall: float | None = None  # the run's fraction over its weighted stages, when sent
    unit: str = ""  # what done / total count ('block', 'window', 'task')
    estimate: Estimate | None = None  # None: the payload has no timings

    @property
    def fraction(self) -> float:
        """The run's fraction done (the stage's, for a payload without the run's)."""
        if self.overall is not None:
            return min(max(self.overall, 0.0), 1.0)
        return stage_fraction(self.done, self.total)

    @property
    def text(self) -> str:
        """'pruning: block 3 of 30', 'perplexity on sample.txt: window 2 of 8', 'loading model'."""
        stage = self.stage or "starting"
        if stage.startswith("perplexity "):
            stage = f"perplexity on {tables.dataset_title(stage[len('perplexity '):])}"
        if self.total <= 1:  # a one-step stage: its name says it all
            return stage
        return f"{stage}: {self.unit or 'step'} {self.done} of {self.total}"

    @property
    def timing(self) -> str:
        """'≈ 3 min 20 s left · 0.8 blocks/s', 'estimating…' (no unit of the stage done
        yet), '' (no timings sent)."""
        if self.estimate is None:
            return ""
        if self.estimate.left_s is None:
            return "estimating…"
        rate = rate_text(self.estimate.rate, self.unit)
        return f"≈ {duration(self.estimate.left_s)} left" + (f" · {rate}" if rate else "")

    @property
    def label(self) -> str:
        """The text and the timing, as a progress bar says them."""
        return " · ".join(t for t in (self.text, self.timing) if t)


def rate_text(rate: float | None, unit: str) -> str:
    """'0.8 blocks/s', '12 windows/s', '1 task per 25 s'; '' without a rate or unit."""
    if rate is None or rate <= 0 or not unit:
        return ""
    if rate < 0.1:
        return f"1 {unit} per {duration(1 / rate)}"
    return f"{rate:.1f} {unit}s/s" if rate < 10 else f"{rate:.0f} {unit}s/s"


def parse_progress(value: Any, now: float | None = None) -> Progress | None:
    """The worker's progress JSON (or dict) as a ``Progress``, its time left as at wall time
    ``now`` (default: now); None when absent or unreadable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        data = json.loads(value) if isinstance(value, str) else value
        if not isinstance(data, dict):
            return None
        stage, done, total = (str(data.get("stage") or ""), int(data.get("done") or 0),
                              int(data.get("total") or 0))
        overall = float(data["fraction"]) if data.get("fraction") is not None else None
    except (ValueError, TypeError):
        return None
    timing = Timing.from_payload(data)
    found = estimate(done, total, timing, time.time() if now is None else now) if timing else None
    unit = str(data.get("unit") or next(
        (u for name, u in OLD_UNITS.items() if stage == name or stage.startswith(name + " ")),
        ""))
    return Progress(stage, done, total, overall if overall is None or math.isfinite(overall)
                    else None, unit, found)


# -- labels -----------------------------------------------------------------------------------
def method_text(method: str, pattern: Any, sparsity: Any, variant: Any = None) -> str:
    """'Wanda 50%', 'Wanda 50% · OWL', 'Magnitude 2:4', 'Dense', 'CoreInfer (activation
    sparsity)': with the run's label words (``variant``) when it has any."""
    if pattern == "activation" and _missing(sparsity) and not variant:
        return f"{tables.method_label(method)} (activation sparsity)"
    if method == "dense" or pattern == "dense":
        return tables.with_variant("Dense", variant)
    return tables.run_label(method, sparsity, pattern, variant)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def when(value: Any, now: datetime | None = None) -> str:
    """A timestamp as people read it: '14:03:27' today, 'Nov 21 14:03' before; '' if absent."""
    if _missing(value):
        return ""
    stamp = pd.Timestamp(value).to_pydatetime()
    now = now or datetime.now()
    if stamp.date() == now.date():
        return f"{stamp:%H:%M:%S}"
    if stamp.year == now.year:
        return f"{stamp:%b %d %H:%M}"
    return f"{stamp:%Y-%m-%d %H:%M}"


def task_choice_label(task: str, offline: tuple[str, ...] = ()) -> str:
    """A zero-shot task as the Launch form offers it, with what it costs: 'sb_everyday · 40
    examples · ≈ 3 s' (the offline model on a 2-core CPU; a bigger model or a GPU scales it);
    a task not in ``offline`` downloads its data from the hub."""
    size = costs.task_size(task)
    words = [task]
    if size is not None:
        words += [f"{size:,} examples", f"≈ {duration(costs.task_s(task, None))}"]
    if offline and task not in offline:
        words.append("from the hub")
    return " · ".join(words)


def duration(seconds: float | None) -> str:
    """'8 s', '2 min 05 s', '1 h 02 min'; '' when unknown."""
    if seconds is None or math.isnan(seconds):
        return ""
    total = max(int(round(seconds)), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def elapsed(start: Any, end: Any, now: datetime | None = None) -> str:
    """How long a run took (or has been running, when ``end`` is absent)."""
    if _missing(start):
        return ""
    finish = (now or datetime.now()) if _missing(end) else pd.Timestamp(end).to_pydatetime()
    return duration((finish - pd.Timestamp(start).to_pydatetime()).total_seconds())


def first_line(text: Any, limit: int = ERROR_CHARS) -> str:
    if _missing(text):
        return ""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- the run list -----------------------------------------------------------------------------
def run_rows(store: Store) -> pd.DataFrame:
    """The own runs' rows of the results file, newest first (what ``runs_table`` formats; it
    changes only when the file does, so the page caches it)."""
    return queries.own_run_rows(store)


def with_status(store: Store, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (of ``run_rows``) with the shown ``Status`` ('cancelling' for a running run
    asked to stop) and ``Run`` columns: enough for the summary, the filter and the pages of
    the list, without formatting every row."""
    running = [int(i) for i in rows.loc[rows["status"] == "running", "id"]]
    asked = {i for i, live in store.control.live(running).items() if live["cancel_requested"]}
    status = rows["status"].astype(str).where(~rows["id"].isin(asked), "cancelling")
    return rows.assign(Run=rows["id"].astype(int), Status=status)


def runs_table(store: Store, now: datetime | None = None,
               rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The user's own runs (``rows``, default ``run_rows(store)``), newest first, as shown on
    the Runs page (``COLUMNS``), with the live progress and cancel requests of the running
    ones from the control store.

    Every cell is text except Run (an id) and Progress (0-100, only while a run is active).
    """
    frame = run_rows(store) if rows is None else rows
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    now = now or datetime.now()
    live = store.control.live([int(i) for i, s in zip(frame["id"], frame["status"], strict=True)
                               if s == "running"])
    status = [("cancelling" if s == "running" and live.get(int(i), {}).get("cancel_requested")
               else str(s)) for i, s in zip(frame["id"], frame["status"], strict=True)]
    progress = [parse_progress(live.get(int(i), {}).get("progress"), now.timestamp())
                if s in ACTIVE else None for i, s in zip(frame["id"], status, strict=True)]
    table = pd.DataFrame({
        "Run": frame["id"].astype(int),
        "Name": [meta.text_or_none(n) or "" for n in frame["name"]],
        "Status": status,
        "Model": [tables.short_name(m) for m in frame["model"]],
        "Method": [method_text(m, p, s, v) for m, p, s, v in
                   zip(frame["method"], frame["pattern"], frame["sparsity"], _column(frame,
                       "variant"), strict=True)],
        "Tags": [", ".join(meta.tag_tuple(t)) for t in frame["tags"]],
        "Progress": [p.fraction * 100 if p else None for p in progress],
        "Stage": [p.label if p else ("starting" if s in ACTIVE else "")
                  for p, s in zip(progress, status, strict=True)],
        "Queued": [when(t, now) for t in frame["created_at"]],
        "Started": [when(t, now) for t in frame["started_at"]],
        "Duration": [elapsed(a, b, now) for a, b in
                     zip(frame["started_at"], frame["finished_at"], strict=True)],
        "Error": [first_line(e) if s in ("failed", "cancelled") else ""
                  for e, s in zip(frame["error"], status, strict=True)],
        "Archived": [when(t, now) for t in frame["archived_at"]],
    }, columns=COLUMNS)
    return _with_numbers(table, frame)


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return frame[name].tolist() if name in frame else [None] * len(frame)


def is_number_column(name: Any) -> bool:
    """Whether ``name`` is one of the key results' number columns."""
    return str(name).startswith(PPL_PREFIX) or name in (ZERO_SHOT, RETENTION, TASK_SCORE)


def _with_numbers(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The list with ``frame``'s key-result number columns (``run_list.key_results``) after
    Method, percentages for the zero-shot ones."""
    numbers = [c for c in frame.columns if is_number_column(c)]
    if not numbers:
        return table
    at = table.columns.get_loc("Method") + 1
    for offset, name in enumerate(numbers):
        values = frame[name].to_numpy(dtype=float)
        table.insert(at + offset, name,
                     values * 100 if name in (ZERO_SHOT, RETENTION) else values)
    return table


def summary(runs: pd.DataFrame) -> str:
    """'1 running · 2 queued · 3 done' (Markdown, statuses in a fixed order)."""
    counts = runs["Status"].value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts.index) - set(STATUS_ORDER))
    return "  ·  ".join(f"**{counts[s]}** {s}" for s in order)


#: Runs per page of the Runs page's list.
PAGE_ROWS = 50


def page_of(runs: pd.DataFrame, statuses: list[str] | None, page: int,
            per_page: int = PAGE_ROWS) -> tuple[pd.DataFrame, int]:
    """The ``page``-th (from 1) slice of the runs with one of ``statuses`` (all when empty),
    newest first, and the number of pages (at least 1)."""
    chosen = runs[runs["Status"].isin(statuses)] if statuses else runs
    pages = max(1, math.ceil(len(chosen) / per_page))
    page = min(max(page, 1), pages)
    return chosen.iloc[(page - 1) * per_page: page * per_page], pages


def shown_runs(runs: pd.DataFrame, *, archived: bool = False) -> pd.DataFrame:
    """The runs the list shows: without the archived ones unless ``archived``."""
    return runs if archived else runs[runs["archived_at"].isna()]


def tag_choices(runs: pd.DataFrame) -> list[str]:
    """Every tag of ``runs`` once (ignoring case), sorted, for the tag filter."""
    return sorted(meta.unique_tags(t for tags in runs["tags"] for t in meta.tag_tuple(tags)),
                  key=str.casefold)


def matching(runs: pd.DataFrame, text: str = "", tags: list[str] | None = None
             ) -> pd.DataFrame:
    """The runs (rows of ``with_status``) that have every one of ``tags`` and hold ``text``
    (ignoring case) in their name, notes, tags, method or model, as stored or as shown."""
    wanted = {t.casefold() for t in tags or []}
    needle = text.strip().casefold()
    if runs.empty or not (wanted or needle):
        return runs
    keep = []
    for row in runs[["name", "notes", "tags", "method", "pattern", "sparsity",
                     "model"]].itertuples(index=False):
        row_tags = meta.tag_tuple(row.tags)
        if not wanted <= {t.casefold() for t in row_tags}:
            keep.append(False)
            continue
        words = [meta.text_or_none(row.name) or "", meta.text_or_none(row.notes) or "",
                 *row_tags, str(row.method), method_text(row.method, row.pattern, row.sparsity),
                 str(row.model), tables.short_name(row.model)]
        keep.append(not needle or any(needle in w.casefold() for w in words))
    return runs[keep]


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    """Run id -> 'Run 12 · my name · Wanda 50% · tiny-model' for the run picker (plain text;
    no status, so a label never changes while a run progresses); one pass over the rows."""
    return {int(r): _label(r, m, model, name=name or None) for r, m, model, name in
            zip(runs["Run"], runs["Method"], runs["Model"], runs["Name"], strict=True)}


def run_from_url(value: str | None, run_ids: set[int]) -> tuple[int | None, str | None]:
    """The run a link's ``?run=`` asks for, among ``run_ids`` (the own runs); or why none is
    shown (None, None: the link names no run)."""
    if value is None or not str(value).strip():
        return None, None
    text = str(value).strip()
    if not text.isdigit():
        return None, f"The link asks for run {text!r}: a run is named by its number (run=12)."
    if int(text) not in run_ids:
        return None, (f"The link asks for run {int(text)}, which is not one of your runs here "
                      "(published figures have no run details; the link may be of another "
                      "results file).")
    return int(text), None


def _label(run_id: int, method: str, model: str, status: str | None = None,
           name: str | None = None) -> str:
    """'Run 12 · running · Wanda 50% · tiny-model' (without a status or name when None)."""
    return " · ".join([f"Run {int(run_id)}", *([status] if status else []),
                       *([name] if name else []), method, model])


def progress_bars(runs: pd.DataFrame) -> list[tuple[float, str]]:
    """(fraction, text) of each active run, for a progress bar each."""
    bars = []
    for row in runs[runs["Status"].isin(ACTIVE)].itertuples(index=False):
        fraction = 0.0 if _missing(row.Progress) else float(row.Progress) / 100
        label = _label(row.Run, row.Method, row.Model, row.Status)
        bars.append((fraction, f"**{label}** — {row.Stage}"))
    return bars


def default_run(runs: pd.DataFrame) -> int:
    """The run the details open on: the newest running one, else the newest queued one, else
    the newest that is not a dense run (a baseline, queued after the run it serves), else the
    newest (``runs`` newest first)."""
    for statuses in (ACTIVE, ("queued",)):
        chosen = runs[runs["Status"].isin(statuses)]
        if len(chosen):
            return int(chosen["Run"].iloc[0])
    if "method" in runs:
        pruned = runs[runs["method"] != "dense"]
        if len(pruned):
            return int(pruned["Run"].iloc[0])
    return int(runs["Run"].iloc[0])


# -- one run ----------------------------------------------------------------------------------
def run_detail(store: Store, run_id: int, now: datetime | None = None) -> dict[str, Any]:
    """One run's row with spec / environment parsed, progress and readable times."""
    frame = queries.run_row(store, run_id)
    if frame.empty:
        raise ValueError(f"no run {run_id}")
    row = frame.iloc[0].to_dict()
    for key in ("spec", "environment"):
        row[key] = tables.parse_spec(row[key]) if not _missing(row[key]) else {}
    live = store.control.live([run_id]).get(run_id, {}) if row["status"] == "running" else {}
    now = now or datetime.now()
    row["cancel_requested"] = bool(live.get("cancel_requested"))
    row["progress"] = parse_progress(live.get("progress"), now.timestamp())
    row["error"] = None if _missing(row["error"]) else str(row["error"])
    row["meta"] = meta.from_row(row.pop("name"), row.pop("notes"), row.pop("tags"))
    row["archived"] = when(row["archived_at"], now)
    row["times"] = {
        "Queued": when(row["created_at"], now),
        "Started": when(row["started_at"], now),
        "Finished": when(row["finished_at"], now),
        "Running for" if _missing(row["finished_at"]) else "Took":
            elapsed(row["started_at"], row["finished_at"], now),
    }
    return row


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value_text(v)}" for k, v in value.items())
    return str(value)


#: Readable names of spec fields, in the order they are listed.
SPEC_LABELS = {
    "model": "Model", "method": "Method", "sparsity": "Sparsity",
    "method_params": "Method parameters", "block_range": "Block range",
    "calibration": "Calibration text", "samples": "Calibration samples",
    "seqlen": "Tokens per sample", "seed": "Seed", "ppl_datasets": "Evaluation datasets",
    "ppl_seqlen": "Window length", "max_windows": "Max windows", "batch_size": "Batch size",
    "dtype": "Weights dtype", "device": "Device", "trust_remote_code": "Trust remote code",
    "zero_shot_tasks": "Zero-shot tasks", "num_fewshot": "Few-shot examples",
    "zs_limit": "Zero-shot examples per task",
    "save_dir": "Saved to", "selection": "Selection rule", "data_protocol": "Data protocol",
    "kind": "Run kind",
}
ZERO_SHOT_KEYS = ("num_fewshot", "zs_limit")
CALIBRATION_KEYS = ("calibration", "samples", "seqlen", "seed")
DENSE_ONLY_HIDDEN = ("sparsity", "method_params", "block_range", *CALIBRATION_KEYS)


def spec_rows(spec: dict[str, Any]) -> pd.DataFrame:
    """A run's spec as a two-column table of text: settings its method ignores and empty
    optional settings are left out."""
    method = spec.get("method")
    hidden: tuple[str, ...] = ("kind",)
    if method == "dense":
        hidden += DENSE_ONLY_HIDDEN
    elif method in CALIBRATION_FREE:
        hidden += CALIBRATION_KEYS
    if not spec.get("zero_shot_tasks"):
        hidden += ZERO_SHOT_KEYS
    when_empty = {"max_windows": "all", "zs_limit": "all", "block_range": "all blocks",
                  "method_params": "defaults"}
    rows = []
    for key in [*SPEC_LABELS, *(k for k in spec if k not in SPEC_LABELS)]:
        if key not in spec or key in hidden:
            continue
        value = spec[key]
        if _blank(value):
            if key not in when_empty:
                continue
            value = when_empty[key]
        if key == "method":
            value = tables.method_label(value)
        rows.append((SPEC_LABELS.get(key, key.replace("_", " ").capitalize()),
                     _value_text(value)))
    return pd.DataFrame(rows, columns=["Setting", "Value"])


def model_caption(name: str) -> str:
    """One line under a model field: what the named model is, or where it will be loaded from."""
    from core.engine import models  # transformers, imported by the launch forms anyway

    name = name.strip()
    if name in models.OFFLINE_MODELS:
        return (f"**{name}**: {models.OFFLINE_MODELS[name].description}; installed with the "
                "app, no hub access needed.")
    if not name:
        return f"Empty: give a model, e.g. {config.DEFAULT_MODEL} (the offline default)."
    path = Path(local_path(name))
    if path.is_dir():
        return f"A local folder: `{path}`."
    if path.is_absolute() or name.startswith((".", "~")):
        return f"`{path}` is not a folder on this machine."
    return (f"A Hugging Face hub id: `{name}` is loaded from the local hub cache (offline) or "
            "downloaded.")


def saved_model(spec: dict[str, Any]) -> str | None:
    """Where a run saved its model and how large it is on disk (Markdown); None if not saved."""
    folder = spec.get("save_dir")
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        return f"Saved model: `{folder}` (the folder is no longer there)"
    files = [f for f in path.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    return f"Saved model: `{folder}` ({len(files)} files, {size / 2**20:,.1f} MiB)"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def environment_rows(environment: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([(k, _value_text(v)) for k, v in environment.items()],
                        columns=["Setting", "Value"])


def run_results(store: Store, run_id: int) -> pd.DataFrame:
    """A finished run's numbers as text: perplexity per dataset, measured sparsity, timings."""
    frame = queries.run_metric_rows(store, run_id)
    rows = []
    for r in frame.itertuples(index=False):
        if r.kind == "perplexity":
            what = f"Perplexity on {tables.dataset_title(r.dataset)}"
            value = _ppl_text(r.status, r.value)
            if not _missing(r.n_samples):
                value += f"  ({int(r.n_samples):,} tokens)"
        elif r.kind == "sparsity":
            what, value = "Measured sparsity", f"{r.value:.2%}"
        elif r.kind == "timing":
            what = {"prune_seconds": "Pruning time", "eval_seconds": "Evaluation time"}.get(
                r.metric, r.metric)
            value = duration(r.value) if r.value >= 1 else f"{r.value:.2f} s"
        elif r.kind == "zero_shot":
            what = f"Zero-shot {r.dataset}: {r.metric}"
            value = "—" if _missing(r.value) else f"{r.value:.4f}"
        elif r.kind == "memory":
            what, value = "Peak memory", f"{r.value:,.0f} MB"
        else:
            what, value = f"{r.kind} {r.metric} ({r.dataset})", tables.format_value(r.value,
                                                                                    "score")
        rows.append((what, value))
    order = {"Perplexity": 0, "Zero-shot": 1, "Measured": 2, "Pruning": 3, "Evaluation": 4,
             "Peak": 5}
    rows.sort(key=lambda row: order.get(row[0].split()[0], 6))
    return pd.DataFrame(rows, columns=["Result", "Value"])


def _ppl_text(status: str, value: Any) -> str:
    """A run's perplexity as its results list shows it: '12.345', 'diverged', or 'collapsed'
    with the stored value (at or above the vocabulary size)."""
    if status == "collapsed":
        shown = "" if _missing(value) else f" (PPL {value:,.0f} ≥ vocabulary size)"
        return tables.COLLAPSED + shown
    if status == "diverged" or _missing(value):
        return tables.DIVERGED
    return f"{value:.3f}"


def log_tail(store: Store, run_id: int, lines: int = 40, when: str = "%H:%M:%S") -> list[str]:
    """The run's last log lines (``lines=0``: all of them), timed by ``when`` (from the control
    store; runs logged before it existed: from the results file)."""
    kept = store.control.logs(run_id, last=lines or None)
    if kept:
        return [f"{ts:{when}}  {line}" for _, ts, line in kept]
    frame = queries.old_log_lines(store, run_id, lines or None)
    return [f"{ts:{when}}  {line}" for ts, line in
            zip(frame["ts"][::-1], frame["line"][::-1], strict=True)]


def full_log(store: Store, run_id: int) -> str:
    """Every log line of the run with its date and time, as a text file."""
    return "\n".join(log_tail(store, run_id, lines=0, when="%Y-%m-%d %H:%M:%S")) + "\n"


def status_counts(store: Store) -> dict[str, int]:
    frame = queries.own_status_counts(store)
    return dict(zip(frame["status"], frame["n"].astype(int), strict=True))


# -- the launch form --------------------------------------------------------------------------
def parse_block_range(text: str) -> tuple[list[int] | None, str | None]:
    """'' -> no range; '0,15' -> [0, 15]; anything unreadable -> a problem for the form."""
    if not text.strip():
        return None, None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2:
        return None, (f"Block range: {text.strip()!r} is not two whole numbers; write start,end "
                      "such as 0,15 (blocks start to end-1 are pruned), or leave it empty for "
                      "all blocks.")
    return values, None


def local_path(text: str) -> str:
    """A local path made absolute (the worker runs in another folder); other text unchanged."""
    text = text.strip()
    if not text:
        return text
    path = Path(text).expanduser()
    if text.startswith(("/", ".", "~")) or path.exists():
        return str(path.resolve())
    return text


def text_file_problems(label: str, paths: list[str]) -> list[str]:
    """Problems with the local .txt files given for ``label`` (empty entry, missing file)."""
    if not paths:
        return [f"{label}: enter the path of a .txt file, or pick one of the listed sources."]
    return [f"{label}: the file {p!r} does not exist; give the path of a UTF-8 .txt file."
            for p in paths if not Path(p).expanduser().is_file()]


#: The Launch form's fields from top to bottom: problems are listed in this order.
FORM_ORDER = ("Model", "Dtype", "Device", "Method", "Sparsity", "Block range",
              "Method parameters", "Calibration", "Evaluation", "Perplexity seqlen",
              "Max windows", "Batch size", "Zero-shot", "Few-shot", "Sweep", "Run name",
              "Notes", "Tags")


def merge_problems(form: list[str], spec: list[str]) -> list[str]:
    """The form's and the spec's problems in form order, each field's problem said once."""
    covered = {"Calibration text:": "Calibration source", "Evaluation:": "Evaluation"}
    skip = tuple(prefix for mark, prefix in covered.items()
                 if any(p.startswith(mark) for p in form))
    merged = [*form, *(p for p in spec if not (skip and p.startswith(skip)))]

    def position(problem: str) -> int:
        starts = [i for i, name in enumerate(FORM_ORDER) if problem.startswith(name)]
        return max(starts, key=lambda i: len(FORM_ORDER[i])) if starts else len(FORM_ORDER)

    return sorted(merged, key=position)


def submission_message(store: Store, submission: Any) -> str:
    """What the Launch page says after ``jobs.submit`` (a ``jobs.Submission``)."""
    statuses = queries.runs_by_id(store, [submission.run_id,
                                          submission.baseline_id or submission.run_id])
    rows = {int(r.id): r for r in statuses.itertuples(index=False)}
    run = rows[submission.run_id]
    what = f"{method_text(run.method, run.pattern, run.sparsity)} on {tables.short_name(run.model)}"
    if submission.reused:
        text = (f"Nothing new was queued: an identical run (run {submission.run_id}, {what}) is "
                f"already {run.status}, and its results are reused. Tick 'Run again even if an "
                "identical run is stored' for a fresh run.")
    else:
        text = f"Queued run {submission.run_id}: {what}."
    baseline = rows.get(submission.baseline_id) if submission.baseline_id else None
    if baseline is not None and not submission.reused:
        text += (f" Its dense baseline (for the change from dense) is run {baseline.id}, "
                 f"{baseline.status}.")
    return text + meta_message(submission)


def meta_message(submission: Any) -> str:
    """What became of the name, notes and tags given with a submission that reused a run
    (' Run 5 got the notes given here. Run 5 keeps its own name; ...'); '' for a new run."""
    if not submission.reused:
        return ""
    text = ""
    if submission.meta_set:
        text += f" Run {submission.run_id} got the {_fields(submission.meta_set)} given here."
    if submission.meta_kept:
        kept = submission.meta_kept
        text += (f" Run {submission.run_id} keeps its own {_fields(kept)}"
                 + (f" (with the tags given here it would have more than {meta.MAX_TAGS})"
                    if "tags" in kept else "")
                 + "; change them on the Runs page.")
    return text


def _fields(fields: tuple[str, ...]) -> str:
    """('name', 'tags') -> 'name and tags'."""
    names = [meta.FIELDS[f].lower().removeprefix("run ") for f in fields]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def sweep_message(submission: Any) -> str:
    """What the Launch page says after ``jobs.submit_sweep`` (a ``jobs.SweepSubmission``)."""
    cells = len(submission.run_ids)
    fresh = cells - submission.reused
    text = (f"Queued sweep {submission.sweep_id}: {cells} cell(s), {fresh} new run(s)")
    if submission.reused:
        text += f", {submission.reused} identical run(s) reused"
    return text + ". Its grid fills in on the Compute & ablations page as the runs finish."


def parse_grid(text: str) -> tuple[dict[str, list[float]] | None, list[str]]:
    """'name = v1, v2' lines -> ({name: [v1, v2]}, problems); an empty text is no sweep."""
    grid: dict[str, list[float]] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, values = line.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(f"Sweep line {number}: write 'name = value, value', e.g. "
                            "'method_params.alpha = 0.1, 1, 5'.")
            continue
        parsed = []
        for item in values.split(","):
            item = item.strip()
            try:
                number_value = float(item)
            except ValueError:
                problems.append(f"Sweep line {number}: {item!r} is not a number.")
                continue
            parsed.append(int(number_value) if number_value.is_integer() and "." not in item
                          else number_value)
        if name in grid:
            problems.append(f"Sweep line {number}: {name!r} is given twice.")
        grid[name] = parsed
    return (grid or None), problems


def split_paths(text: str) -> list[str]:
    return [local_path(p) for p in text.split(",") if p.strip()]


# -- devices ----------------------------------------------------------------------------------
def held_slot(worker: str) -> str:
    """The slot a local worker name ends with (``[cli:]host:pid:cuda:2`` -> ``cuda:2``)."""
    parts = worker.removeprefix("cli:").split(":", 2)
    return parts[2] if len(parts) == 3 and parts[1].isdigit() else ""


def device_queues(store: Store, slots: list[str]) -> pd.DataFrame:
    """One row per GPU slot of this machine (and the CPU): the run it executes now and the
    runs waiting for it, pinned to it or for any GPU (``auto``).  Empty without GPUs."""
    if len(slots) < 2:
        return pd.DataFrame()
    runs = queries.active_run_devices(store)
    running = runs[runs["status"] == "running"]
    queued = runs[runs["status"] == "queued"]
    held = {held_slot(w): int(i) for i, w in zip(running["id"], running["worker"], strict=True)}
    named = queued["device"].map(devices.normalize)  # older runs stored cuda:0 as cuda
    any_gpu = int((named == devices.AUTO).sum())
    rows = []
    for slot in slots:
        pinned = named == slot
        rows.append({"Device": slot.replace("cuda:", "GPU ") if slot != "cpu" else "CPU",
                     "Running": f"run {held[slot]}" if slot in held else "idle",
                     "Queued for it": int(pinned.sum()),
                     "Queued for any GPU": any_gpu if slot != "cpu" else 0})
    return pd.DataFrame(rows)
