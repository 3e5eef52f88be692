"""The results file's schema: its migrations, in order, and what they fill from the stored
specs (the setting columns a baseline is joined on, label texts, earlier rules)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import pandas as pd

#: Spec keys that decide which runs are compared (evaluation windows, few-shot count, dtype,
#: the published table, calibration length) and the ``runs`` column each is written to.
#: Migration 6 adds these columns: a new key needs a migration of its own, not an edit here.
SETTING_COLUMNS = {key: f"set_{key}" for key in (
    "table", "ppl_seqlen", "max_windows", "dtype", "seqlen", "num_fewshot", "zs_limit")}

#: The ``layer_summaries`` row of each run, from its ``layer_stats`` rows.
LAYER_SUMMARY_SELECT = """SELECT run_id,
    count(DISTINCT block) FILTER (WHERE layer = 'block' AND stat = 'sparsity') AS blocks,
    count(*) AS layer_rows FROM layer_stats"""

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: A metric row's status: a number ("ok"), a non-finite perplexity ("diverged"), a finite
#: perplexity at or above the vocabulary size, kept but worse than uniform guessing
#: ("collapsed"), or no value ("missing").
METRIC_STATUSES = ("ok", "diverged", "collapsed", "missing")

# Each migration takes the schema from version i to i + 1.  Never edit a released step: append one.
MIGRATIONS: list[list[str | Callable[[duckdb.DuckDBPyConnection], None]]] = [
    # 1: runs, metrics, per-layer statistics, search trials.
    [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "CREATE SEQUENCE run_ids START 1",
        """CREATE TABLE runs (
            id BIGINT PRIMARY KEY DEFAULT nextval('run_ids'),
            origin VARCHAR NOT NULL,
            source VARCHAR,
            kind VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            sparsity DOUBLE,
            pattern VARCHAR NOT NULL,
            spec JSON NOT NULL,
            spec_hash VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            heartbeat_at TIMESTAMP,
            progress JSON,
            error VARCHAR,
            environment JSON
        )""",
        """CREATE TABLE metrics (
            run_id BIGINT NOT NULL,
            kind VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            stderr DOUBLE,
            n_samples BIGINT,
            status VARCHAR NOT NULL DEFAULT 'ok'
        )""",
        """CREATE TABLE layer_stats (
            run_id BIGINT NOT NULL,
            block INTEGER,
            layer VARCHAR NOT NULL,
            stat VARCHAR NOT NULL,
            value DOUBLE
        )""",
        """CREATE TABLE search_trials (
            run_id BIGINT NOT NULL,
            trial INTEGER NOT NULL,
            label VARCHAR,
            params JSON,
            levels JSON,
            actual_sparsity DOUBLE,
            metric VARCHAR,
            value DOUBLE,
            n_samples BIGINT
        )""",
    ],
    # 2: provenance of each number: the text the source printed and a note (e.g. "seed prints nan").
    [
        "ALTER TABLE metrics ADD COLUMN raw VARCHAR",
        "ALTER TABLE metrics ADD COLUMN note VARCHAR",
        "ALTER TABLE layer_stats ADD COLUMN raw VARCHAR",
        "ALTER TABLE layer_stats ADD COLUMN note VARCHAR",
        "ALTER TABLE search_trials ADD COLUMN raw VARCHAR",
        "ALTER TABLE search_trials ADD COLUMN note VARCHAR",
        """CREATE TABLE run_logs (
            run_id BIGINT NOT NULL,
            ts TIMESTAMP NOT NULL DEFAULT current_timestamp,
            line VARCHAR NOT NULL
        )""",
    ],
    # 3: background execution: cancel requests and which worker holds a run.
    [
        "ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN DEFAULT false",
        "ALTER TABLE runs ADD COLUMN worker VARCHAR",
    ],
    # 4: at most one active (queued or running) own run per identity: active_hash is the
    # spec hash while the run is active, NULL after; unique.  Older duplicates keep no key.
    [
        "ALTER TABLE runs ADD COLUMN active_hash VARCHAR",
        """UPDATE runs SET active_hash = spec_hash WHERE id IN (
               SELECT max(id) FROM runs WHERE origin = 'own' AND status IN ('queued', 'running')
               GROUP BY spec_hash)""",
    ],
    # 5: ... and its unique index (DuckDB builds an index only in a transaction of its own).
    ["CREATE UNIQUE INDEX runs_one_active ON runs (active_hash)"],
    # 6: the spec settings that decide which runs are compared, as columns (``SETTING_COLUMNS``),
    # so that a run's dense baseline is a join; filled from the stored specs.
    [*(f"ALTER TABLE runs ADD COLUMN {column} VARCHAR" for column in SETTING_COLUMNS.values()),
     lambda con: fill_setting_columns(con)],
    # 7: one summary row per run with layer statistics (how many blocks have a measured
    # sparsity, how many rows), kept by every write, so that no page counts millions of rows.
    ["CREATE TABLE layer_summaries (run_id BIGINT NOT NULL, blocks INTEGER NOT NULL, "
     "layer_rows BIGINT NOT NULL)",
     f"INSERT INTO layer_summaries {LAYER_SUMMARY_SELECT} GROUP BY run_id"],
    # 8: the specs of runs stored before the reference selection rules and data protocol say
    # what those runs did: selection 'exact', data protocol 1.
    [lambda con: mark_earlier_rules(con)],
    # 9: what people call a run (``core.store.meta``: name, notes, tags; not part of its spec
    # or identity) and when it was archived (hidden from the Runs list; NULL: not archived).
    ["ALTER TABLE runs ADD COLUMN name VARCHAR",
     "ALTER TABLE runs ADD COLUMN notes VARCHAR",
     "ALTER TABLE runs ADD COLUMN tags VARCHAR[]",
     "ALTER TABLE runs ADD COLUMN archived_at TIMESTAMP"],
    # 10: each evaluated window's mean NLL per run and perplexity dataset (the perplexity's
    # uncertainty, ``core.analysis.noise``); runs stored before have none.
    ["CREATE TABLE window_nlls (run_id BIGINT NOT NULL, dataset VARCHAR NOT NULL, "
     "nlls DOUBLE[] NOT NULL)"],
    # 11: an own run's label words (what tells it apart from a default run of its method) and
    # its settings in words, from its spec class (``SpecModel.label_words``), so that no page
    # parses specs to label a row; filled from the stored specs.
    ["ALTER TABLE runs ADD COLUMN variant VARCHAR",
     "ALTER TABLE runs ADD COLUMN settings VARCHAR",
     lambda con: fill_label_columns(con)],
]
def setting_value(value: Any) -> str | None:
    """A spec setting as the text its column holds: equal settings give equal texts (4.0 and 4
    give '4'; '' and a missing key give NULL)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def setting_values(spec: Mapping[str, Any]) -> list[str | None]:
    """The values of ``SETTING_COLUMNS`` for a spec, in that order."""
    return [setting_value(spec.get(key)) for key in SETTING_COLUMNS]


def fill_setting_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Write every run's setting columns from its stored spec (migration 6)."""
    runs = con.execute("SELECT id, spec FROM runs").fetchall()
    if not runs:
        return
    columns = list(SETTING_COLUMNS.values())
    frame = pd.DataFrame([[rid, *setting_values(json.loads(spec))] for rid, spec in runs],
                         columns=["id", *columns], dtype=object)
    con.register("_settings", frame)
    try:
        con.execute(f"UPDATE runs SET {', '.join(f'{c} = s.{c}' for c in columns)} "
                    "FROM _settings s WHERE runs.id = s.id")
    finally:
        con.unregister("_settings")


def label_texts(spec: Any) -> tuple[str, str]:
    """A spec object's (variant, settings) texts, each a ' · '-joined list of short words."""
    return " · ".join(spec.label_words()), " · ".join(spec.setting_words())


def fill_label_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Migration 11: every own run's ``variant`` and ``settings`` from its rebuilt spec (a
    spec its kind can no longer read keeps NULL: pages fall back to its raw settings)."""
    from core.runs.registry import spec_from_dict  # the kinds' spec classes (engine imports)

    filled = []
    for rid, text in con.execute("SELECT id, spec FROM runs WHERE origin = 'own' "
                                 "AND kind <> 'sweep'").fetchall():
        try:
            filled.append((rid, *label_texts(spec_from_dict(json.loads(text)))))
        except (ValueError, TypeError, KeyError):
            continue
    if not filled:
        return
    con.register("_labels", pd.DataFrame(filled, columns=["id", "variant", "settings"]))
    try:
        con.execute("UPDATE runs SET variant = l.variant, settings = l.settings "
                    "FROM _labels l WHERE runs.id = l.id")
    finally:
        con.unregister("_labels")


def earlier_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """A prune or activation spec stored before migration 8 with the rules it ran with: the
    exact-count selection (a pruning or activation method) and data protocol 1."""
    marked = {"data_protocol": 1, **spec}
    if spec.get("method") not in (None, "dense"):
        marked.setdefault("selection", "exact")
    return marked


def mark_earlier_rules(con: duckdb.DuckDBPyConnection) -> None:
    """Migration 8: mark the own prune and activation runs, and the base spec of sweeps, with
    ``earlier_rules``.  Their hashes stay: a new run (new rules) never equals one of them."""
    changed = []
    for rid, kind, text in con.execute(
            "SELECT id, kind, spec FROM runs WHERE origin = 'own' "
            "AND kind IN ('prune', 'activation', 'sweep')").fetchall():
        spec = json.loads(text)
        if kind == "sweep" and isinstance(spec.get("base"), dict):
            marked = {**spec, "base": earlier_rules(spec["base"])}
        else:
            marked = earlier_rules(spec) if kind != "sweep" else spec
        if marked != spec:
            changed.append((rid, json.dumps(marked, sort_keys=True, default=str)))
    if not changed:
        return
    con.register("_marked", pd.DataFrame(changed, columns=["id", "spec"]))
    try:
        con.execute("UPDATE runs SET spec = m.spec FROM _marked m WHERE runs.id = m.id")
    finally:
        con.unregister("_marked")

SCHEMA_VERSION = len(MIGRATIONS)
