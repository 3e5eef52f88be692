"""Read queries the pages use, in one place (the present layer formats what they return)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.store.db import SETTING_COLUMNS, Store

_RUN_COLUMNS = """r.id AS run_id, r.origin, r.source, r.kind AS run_kind, r.model, r.method,
                  r.sparsity, r.pattern, r.spec, r.status AS run_status, r.variant,
                  r.settings AS run_settings"""


#: A frame attribute: every row carries its run's columns as read from the runs table (so
#: rows of one run id have the same run columns, which ``prepare`` works with once per run).
PER_RUN = "sparsebench_per_run"

#: The ids of archived runs (a subquery).
ARCHIVED = "SELECT id FROM runs WHERE archived_at IS NOT NULL"


#: The run columns each metric row carries (read once per run, then repeated for its rows).
_METRIC_RUN_COLUMNS = ("origin", "source", "run_kind", "model", "method", "sparsity", "pattern",
                       "spec", "run_status", *SETTING_COLUMNS.values(), "variant",
                       "run_settings")


def metric_rows(store: Store, kind: str | None = None, run_ids: Sequence[int] | None = None,
                archived: bool = False, model: str | None = None, origin: str | None = None
                ) -> pd.DataFrame:
    """Metric rows with their run's columns, spec and setting columns (of one ``kind``, of
    ``run_ids`` and of runs of ``model`` only, when given), by run; a perplexity row (also
    an activation run's split perplexity) has its windows' mean NLLs (``nlls``: a float
    array, None where the run stored none).  Each run's columns are read
    once and shared by its rows (45,000 rows each carrying a copy of their run's 18 texts cost
    a page a tenth of a second, their spec texts a third).  Archived runs are left out unless
    ``archived`` or named in ``run_ids``; ``origin`` ('own', 'published') keeps that origin's
    runs only."""
    where, params = [], []
    if kind is not None:
        where, params = ["m.kind = ?"], [kind]
    if run_ids is not None:
        where.append("list_contains(?, m.run_id)")
        params.append([int(i) for i in run_ids])
    elif not archived:
        where.append(f"m.run_id NOT IN ({ARCHIVED})")
    for column, value in (("model", model), ("origin", origin)):
        if value is not None:
            where.append(f"m.run_id IN (SELECT id FROM runs WHERE {column} = ?)")
            params.append(value)
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    nlls = ("w.nlls" if kind in (None, "perplexity", "activation")
            else "NULL::DOUBLE[] AS nlls")  # only perplexities have windows
    join = ("""LEFT JOIN window_nlls w ON m.kind IN ('perplexity', 'activation')
               AND m.metric = 'ppl' AND w.run_id = m.run_id AND w.dataset = m.dataset"""
            if nlls == "w.nlls" else "")
    with store.connect() as con:
        rows = object_frame(con.execute(
            f"""SELECT m.run_id, m.kind, m.dataset, m.metric, m.value, m.stderr, m.n_samples,
                       m.status, m.raw, m.note, {nlls}
                FROM metrics m {join} {condition}
                ORDER BY m.run_id, m.rowid""", params).fetchnumpy())
        runs = object_frame(con.execute(
            f"""SELECT {_RUN_COLUMNS},
                       {", ".join(f"r.{c}" for c in SETTING_COLUMNS.values())}
                FROM runs r WHERE r.id IN (SELECT DISTINCT m.run_id FROM metrics m
                                           {condition})""", params).fetchnumpy())
    return _with_run_columns(rows, runs)


def _with_run_columns(rows: pd.DataFrame, runs: pd.DataFrame,
                      names: Sequence[str] = _METRIC_RUN_COLUMNS) -> pd.DataFrame:
    """``rows`` (metric or layer rows, each of a run in ``runs``) with their run's columns
    ``names`` after ``run_id`` (``runs``: ``_RUN_COLUMNS`` and more, one row per run)."""
    at = pd.Index(runs["run_id"].to_numpy()).get_indexer(rows["run_id"].to_numpy())
    columns: dict[str, Any] = {"run_id": rows["run_id"]}
    for name in names:
        values = runs[name]
        taken = values.to_numpy()[at] if not isinstance(values.dtype, pd.api.extensions.
                                                          ExtensionDtype) else values.take(at)
        columns[name] = pd.Series(taken, dtype=values.dtype, copy=False)
    for name in rows.columns[1:]:
        columns[name] = rows[name]
    frame = pd.DataFrame(columns)
    frame.attrs[PER_RUN] = True
    return frame


def object_frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """A frame of DuckDB's ``fetchnumpy`` columns with text as plain Python objects (None for
    NULL), numbers as NaN or nullable integers: the tables iterate and filter object columns
    several times faster than pandas' Arrow-backed strings, and skip converting them twice."""
    columns: dict[str, Any] = {}
    for name, values in arrays.items():
        if not isinstance(values, np.ma.MaskedArray):
            columns[name] = (pd.Series(values, dtype=object, copy=False)
                             if values.dtype == object else values)
        elif values.dtype == object:  # a Series of dtype object: pandas would infer 'str'
            columns[name] = pd.Series(np.where(values.mask, None, values.data), dtype=object,
                                      copy=False)
        elif values.dtype.kind == "f":
            columns[name] = values.filled(np.nan)
        elif values.dtype.kind in "iu":
            columns[name] = pd.arrays.IntegerArray(values.data.astype("int64"),
                                                   np.ma.getmaskarray(values))
        elif values.dtype.kind == "b":
            columns[name] = pd.arrays.BooleanArray(values.data, np.ma.getmaskarray(values))
        else:
            columns[name] = pd.Series(list(values), dtype=object)
    return pd.DataFrame(columns)


#: The run columns each layer row carries (read once per run, as for metric rows).
_LAYER_RUN_COLUMNS = ("origin", "source", "run_kind", "model", "method", "sparsity", "pattern",
                      "spec", "run_status", "variant", "run_settings")


def layer_stat_rows(store: Store, run_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Layer statistics rows with their run's columns (of ``run_ids`` only, when given); each
    run's columns are read once and shared by its rows."""
    where, params = "", []
    if run_ids is not None:
        if not run_ids:
            where = "WHERE false"
        else:
            where = "WHERE list_contains(?, l.run_id)"
            params = [[int(i) for i in run_ids]]
    with store.connect() as con:
        rows = object_frame(con.execute(
            f"""SELECT l.run_id, l.block, l.layer, l.stat, l.value, l.raw, l.note
                FROM layer_stats l JOIN runs r ON r.id = l.run_id {where}
                ORDER BY l.run_id, l.block, l.layer""", params).fetchnumpy())
        runs = object_frame(con.execute(
            f"""SELECT {_RUN_COLUMNS}
                FROM runs r WHERE r.id IN (SELECT DISTINCT l.run_id FROM layer_stats l
                                           {where})""", params).fetchnumpy())
    return _with_run_columns(rows, runs, _LAYER_RUN_COLUMNS)


def layer_stat_runs(store: Store, model: str | None = None) -> pd.DataFrame:
    """One row per run that has layer statistics (archived runs left out; of ``model`` only,
    when given): its run's columns and ``blocks``, the number of blocks with a measured block
    sparsity (from the summaries stored with the rows)."""
    with store.connect() as con:
        return object_frame(con.execute(
            f"""SELECT {_RUN_COLUMNS}, s.blocks
                FROM layer_summaries s JOIN runs r ON r.id = s.run_id
                WHERE r.archived_at IS NULL AND (? IS NULL OR r.model = ?) ORDER BY r.id""",
            [model, model]).fetchnumpy())


def result_subjects(store: Store) -> pd.DataFrame:
    """The distinct model, origin and source of the finished runs (archived ones left out)
    that have a perplexity, a zero-shot score or layer statistics: what a report can be of."""
    return store.frame(
        """SELECT DISTINCT model, origin, source FROM runs
           WHERE archived_at IS NULL AND (status IS NULL OR status = 'done')
             AND (id IN (SELECT run_id FROM metrics WHERE kind IN ('perplexity', 'zero_shot'))
                  OR id IN (SELECT run_id FROM layer_summaries))""")


def search_trial_rows(store: Store) -> pd.DataFrame:
    """Search trials with their run's model, source and spec (archived runs left out)."""
    return store.frame(
        """SELECT r.id AS run_id, r.origin, r.source, r.model, r.spec, r.status AS run_status,
                  t.trial, t.label, t.params, t.levels, t.actual_sparsity, t.metric, t.value,
                  t.raw, t.note
           FROM search_trials t JOIN runs r ON r.id = t.run_id
           WHERE r.archived_at IS NULL ORDER BY r.id, t.trial""")


def search_level_rows(store: Store, search_id: int) -> pd.DataFrame:
    """The configured and measured kept fraction per block of each finished full-set run of
    own search ``search_id``."""
    return store.frame(
        """SELECT r.id AS run_id, json_extract_string(r.spec, '$.config') AS config,
                  json_extract_string(r.spec, '$.trial') AS trial, l.block, l.stat, l.value
           FROM layer_stats l JOIN runs r ON r.id = l.run_id
           WHERE r.origin = 'own' AND r.kind = 'activation' AND r.status = 'done'
             AND json_extract_string(r.spec, '$.search') = ? AND l.layer = 'ffn'
             AND l.stat IN ('configured_fraction', 'kept_fraction')""", [str(search_id)])


def sweeps(store: Store) -> pd.DataFrame:
    """Every sweep, newest first."""
    return store.frame("SELECT id, model, method, sparsity, pattern, spec FROM runs "
                       "WHERE kind = 'sweep' ORDER BY id DESC")


def run_spec(store: Store, run_id: int, kind: str | None = None) -> str | None:
    """The stored spec (JSON text) of a run (of ``kind`` when given); None when there is none."""
    sql, params = "SELECT spec FROM runs WHERE id = ?", [int(run_id)]
    if kind is not None:
        sql, params = sql + " AND kind = ?", [*params, kind]
    frame = store.frame(sql, params)
    return None if frame.empty else str(frame.iloc[0, 0])


def own_prune_runs_with_perplexity(store: Store, dataset: str | None) -> pd.DataFrame:
    """Own pruning runs with their perplexity on ``dataset`` (NULL where there is none)."""
    return store.frame(
        """SELECT r.id, r.status, r.spec, m.value, m.status AS metric_status
           FROM runs r LEFT JOIN metrics m ON m.run_id = r.id AND m.kind = 'perplexity'
                AND m.dataset = ?
           WHERE r.origin = 'own' AND r.kind = 'prune'""", [dataset])


def own_run_rows(store: Store) -> pd.DataFrame:
    """The own runs' list rows (archived ones too), newest first; their key results are
    ``own_perplexities`` and the zero-shot table's (``core.present.run_list``)."""
    return store.frame(
        """SELECT id, status, model, method, pattern, sparsity, variant, created_at, started_at,
                  finished_at, error, name, notes, tags, archived_at
           FROM runs WHERE origin = 'own' ORDER BY id DESC""")


def own_perplexities(store: Store) -> pd.DataFrame:
    """Each own run's perplexity per dataset (run_id, dataset, value; NaN where it is not a
    number: diverged, collapsed or missing), for the run list's sortable columns."""
    return store.frame(
        """SELECT m.run_id, m.dataset, CASE WHEN m.status = 'ok' THEN m.value END AS value
           FROM metrics m JOIN runs r ON r.id = m.run_id
           WHERE r.origin = 'own' AND m.kind = 'perplexity' AND m.metric = 'ppl'""")


def own_task_scores(store: Store) -> pd.DataFrame:
    """Each own activation or search run's mean score over the tasks it scored (run_id,
    value: in the metric each task was scored by), for the run list's Task score column."""
    return store.frame(
        """SELECT m.run_id, avg(m.value) AS value
           FROM metrics m JOIN runs r ON r.id = m.run_id
           WHERE r.origin = 'own' AND m.kind = 'task' AND m.status = 'ok'
             AND m.value IS NOT NULL AND NOT isnan(m.value)
           GROUP BY m.run_id""")


def run_row(store: Store, run_id: int) -> pd.DataFrame:
    """One run's whole row (empty when there is no such run)."""
    return store.frame("SELECT * FROM runs WHERE id = ?", [int(run_id)])


def runs_by_id(store: Store, run_ids: Sequence[int]) -> pd.DataFrame:
    """The status, method, pattern, sparsity and model of some runs."""
    return store.frame("SELECT id, status, method, pattern, sparsity, model FROM runs "
                       "WHERE list_contains(?, id)", [[int(i) for i in run_ids]])


def run_metric_rows(store: Store, run_id: int) -> pd.DataFrame:
    """One run's metric rows, by kind, dataset and metric."""
    return store.frame("SELECT kind, dataset, metric, value, status, n_samples FROM metrics "
                       "WHERE run_id = ? ORDER BY kind, dataset, metric", [int(run_id)])


def old_log_lines(store: Store, run_id: int, lines: int | None) -> pd.DataFrame:
    """The last ``lines`` (None: all) log lines a run wrote to the results file (before the
    control store), newest first."""
    sql = "SELECT ts, line FROM run_logs WHERE run_id = ? ORDER BY ts DESC, rowid DESC"
    if lines is None:
        return store.frame(sql, [int(run_id)])
    return store.frame(sql + " LIMIT ?", [int(run_id), int(lines)])


def own_status_counts(store: Store) -> pd.DataFrame:
    """How many own runs have each status."""
    return store.frame("SELECT status, count(*) AS n FROM runs WHERE origin = 'own' "
                       "GROUP BY status")


#: A run's device as the queue reads it (runs stored before the field had a default: cpu).
DEVICE_SQL = "coalesce(json_extract_string(spec, '$.device'), 'cpu')"


def active_run_devices(store: Store) -> pd.DataFrame:
    """Own queued and running runs: id, status, the device their spec names (older specs:
    cpu) and the worker holding them."""
    return store.frame(
        f"SELECT id, status, {DEVICE_SQL} AS device, coalesce(worker, '') AS worker "
        "FROM runs WHERE origin = 'own' AND status IN ('queued', 'running') ORDER BY id")
