"""Which dense run each run is compared with: SQL joins on the setting columns, run by DuckDB.

The rules (the tables' docstring states them for users):

* Perplexity: a row's candidates are the dense rows of the same model, dataset, metric and group
  (a published source, or own runs); an own run's candidates must also share the evaluation
  settings ``PPL_SETTINGS``.  The best candidate shares the most of ``PPL_PREFERENCE`` (in that
  order), then has an 'ok' value, then is the latest run.
* Zero-shot: a run's candidates are the dense runs of the same model and group, for an own run
  with the same ``ZS_SETTINGS``; the best shares the most scored tasks, then the same attempted
  task set, then is the latest run.  A dense run is its own baseline.

Both work on frames (the rows a table shows, after its filters): the best candidate is chosen
once per distinct combination of the settings that decide the choice, not once per row.
"""

from __future__ import annotations

import threading

import duckdb
import pandas as pd

from core.store.db import SETTING_COLUMNS

#: The comparison group of own runs (a published row's group is its source).
OWN_GROUP = "Own runs"
#: Evaluation settings an own run's dense perplexity baseline must share.
PPL_SETTINGS = ("ppl_seqlen", "max_windows", "dtype")
#: Settings a perplexity baseline should share, most important first.
PPL_PREFERENCE = ("table", "ppl_seqlen", "max_windows", "dtype", "seqlen")
#: Evaluation settings an own run's dense zero-shot baseline must share.
ZS_SETTINGS = ("num_fewshot", "zs_limit", "dtype")


def _col(key: str) -> str:
    return SETTING_COLUMNS[key]


def _same(keys: tuple[str, ...], left: str = "p", right: str = "d") -> str:
    return " AND ".join(f"{right}.{_col(k)} IS NOT DISTINCT FROM {left}.{_col(k)}" for k in keys)


def _settings_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The setting columns as text or None (never a float NaN, which DuckDB would not read as
    NULL in a text column)."""
    columns = list(SETTING_COLUMNS.values())
    texts = frame[columns].astype(object)
    return frame.assign(**{c: texts[c].where(texts[c].notna(), None) for c in columns})


_LOCAL = threading.local()


def _query(sql: str, **frames: pd.DataFrame) -> pd.DataFrame:
    """``sql`` over ``frames`` (registered under their names) in this thread's in-memory DuckDB
    connection: opening one per query cost a report of forty tables about half a second."""
    con = getattr(_LOCAL, "con", None)
    if con is None:
        con = _LOCAL.con = duckdb.connect()
    try:
        for name, frame in frames.items():
            con.register(name, frame)
        return con.execute(sql).df()
    finally:
        for name in frames:
            con.unregister(name)


def perplexity_baselines(rows: pd.DataFrame) -> pd.Series:
    """For each row of ``rows`` (prepared perplexity rows: run_id, model, dataset, metric, group,
    dense, status and the setting columns), the position (0-based, in ``rows``' order) of the
    dense row it is compared with; NaN where it has none."""
    probe_keys = ["model", "dataset", "metric", '"group"',
                  *(_col(k) for k in sorted(set(PPL_PREFERENCE) | set(PPL_SETTINGS)))]
    frame = rows[["run_id", "model", "dataset", "metric", "group", "dense", "status",
                  *SETTING_COLUMNS.values()]].reset_index(drop=True)
    frame = _settings_as_text(frame).assign(_pos=range(len(frame)),
                                            dense=frame["dense"].astype(bool))
    keys = ", ".join(probe_keys)
    prefer = ", ".join(f"(d.{_col(k)} IS NOT DISTINCT FROM p.{_col(k)}) DESC"
                       for k in PPL_PREFERENCE)
    join = " AND ".join(f"d.{k} = p.{k}" for k in ("model", "dataset", "metric", '"group"'))
    sql = f"""
        WITH probes AS (SELECT DISTINCT {keys} FROM rows),
        best AS (
            SELECT p.*, d._pos AS _base FROM probes p JOIN rows d ON d.dense AND {join}
                AND (p."group" <> '{OWN_GROUP}' OR ({_same(PPL_SETTINGS)}))
            QUALIFY row_number() OVER (PARTITION BY {", ".join(f"p.{k}" for k in probe_keys)}
                ORDER BY {prefer}, (d.status = 'ok') DESC, d.run_id DESC, d._pos) = 1)
        SELECT r._pos, b._base FROM rows r LEFT JOIN best b ON
            {" AND ".join(f"b.{k} IS NOT DISTINCT FROM r.{k}" for k in probe_keys)}
        ORDER BY r._pos"""
    found = _query(sql, rows=frame)
    return pd.Series(found["_base"].to_numpy(), index=rows.index, dtype="float64")


def zero_shot_baselines(scores: pd.DataFrame, runs: pd.DataFrame) -> dict[int, int]:
    """For each run of ``runs`` (one row per run: run_id, model, group, dense and the setting
    columns), the run id of the dense run it is compared with, from the per-task ``scores``
    (run_id, dataset, status, value); runs with none are left out."""
    run_frame = runs[["run_id", "model", "group", "dense", *SETTING_COLUMNS.values()]]
    run_frame = _settings_as_text(run_frame.drop_duplicates("run_id")).assign(
        dense=lambda f: f["dense"].astype(bool))
    task_frame = scores[["run_id", "dataset", "status", "value"]].astype(
        {"dataset": "category", "status": "category"})  # DuckDB reads Python strings slowly
    settings = ", ".join(_col(k) for k in ZS_SETTINGS)
    sql = f"""
        WITH tasks AS (
            SELECT run_id,
                   list_sort(list(DISTINCT dataset) FILTER (
                       WHERE status = 'ok' AND value IS NOT NULL AND NOT isnan(value))) AS scored,
                   list_sort(list(DISTINCT dataset)) AS attempted
            FROM task_rows GROUP BY run_id),
        info AS (SELECT r.*, coalesce(t.scored, []) AS scored, t.attempted
                 FROM run_rows r LEFT JOIN tasks t USING (run_id)),
        probes AS (SELECT DISTINCT model, "group", {settings}, scored, attempted
                   FROM info WHERE NOT dense),
        best AS (
            SELECT p.*, d.run_id AS _base FROM probes p JOIN info d
                ON d.dense AND d.model = p.model AND d."group" = p."group"
                AND (p."group" <> '{OWN_GROUP}' OR ({_same(ZS_SETTINGS)}))
            QUALIFY row_number() OVER (
                PARTITION BY p.model, p."group", {", ".join(f"p.{_col(k)}" for k in ZS_SETTINGS)},
                             p.scored, p.attempted
                ORDER BY len(list_intersect(d.scored, p.scored)) DESC,
                         (d.attempted IS NOT DISTINCT FROM p.attempted) DESC, d.run_id DESC) = 1)
        SELECT i.run_id, CASE WHEN i.dense THEN i.run_id ELSE b._base END AS _base
        FROM info i LEFT JOIN best b ON NOT i.dense AND b.model = i.model
            AND b."group" = i."group" AND {_same(ZS_SETTINGS, "i", "b")}
            AND b.scored = i.scored AND b.attempted IS NOT DISTINCT FROM i.attempted"""
    found = _query(sql, run_rows=run_frame, task_rows=task_frame).dropna(subset=["_base"])
    return {int(r): int(b) for r, b in zip(found["run_id"], found["_base"], strict=True)}
