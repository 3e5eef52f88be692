"""The DuckDB store: round trip, migration, and clear errors for damaged or locked files."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from core.store import db as store_module
from core.store import queries
from core.store.db import SCHEMA_VERSION, Store, StoreError
from tests.store_procs import hold_lock


def make_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "results.duckdb").init()


def test_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    spec = {"model": "m", "method": "wanda", "sparsity": "0.5"}
    run_id = store.create_run(kind="prune", model="m", method="wanda", sparsity=0.5, spec=spec)
    store.add_metrics(run_id, [
        {"kind": "perplexity", "dataset": "wiki-offline", "metric": "ppl", "value": 12.5,
         "n_samples": 2048},
        {"kind": "perplexity", "dataset": "ptb", "metric": "ppl", "value": None,
         "status": "diverged"},
        {"kind": "perplexity", "dataset": "c4", "metric": "ppl", "value": 6960449.0,
         "status": "collapsed", "note": "at or above the vocabulary size"},
    ])
    store.add_layer_stats(run_id, [{"block": 0, "layer": "mlp.up_proj", "stat": "sparsity",
                                    "value": 0.5}])
    store.add_search_trials(run_id, [{"trial": 1, "params": [0.1, 0.9, 0.5, 100],
                                      "actual_sparsity": 0.4, "metric": "acc", "value": 0.5}])
    assert store.move(run_id, "running")
    assert store.move(run_id, "done", progress={"stage": "x", "done": 1, "total": 1})

    run = store.runs().iloc[0]
    assert run["status"] == "done" and json.loads(run["spec"]) == spec
    assert json.loads(run["progress"]) == {"stage": "x", "done": 1, "total": 1}
    metrics = queries.metric_rows(store, "perplexity").set_index("dataset")
    assert metrics.loc["wiki-offline", "value"] == 12.5
    assert metrics.loc["wiki-offline", "n_samples"] == 2048
    assert metrics.loc["ptb", "status"] == "diverged"
    assert metrics.loc["ptb", "value"] != metrics.loc["ptb", "value"]  # NULL -> NaN in pandas
    assert metrics.loc["c4", "status"] == "collapsed" and metrics.loc["c4", "value"] == 6960449.0
    trials = store.frame("SELECT * FROM search_trials")
    assert json.loads(trials.loc[0, "params"]) == [0.1, 0.9, 0.5, 100]
    assert store.frame("SELECT value FROM layer_stats")["value"].tolist() == [0.5]


def test_bad_values_are_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ValueError, match="status"):
        store.create_run(kind="prune", model="m", method="x", spec={}, status="weird")
    run_id = store.create_run(kind="prune", model="m", method="x", spec={})
    with pytest.raises(ValueError, match="cannot update"):
        store.update_run(run_id, model="other")
    with pytest.raises(ValueError, match="metric status"):
        store.add_metrics(run_id, [{"kind": "k", "dataset": "d", "metric": "m", "status": "bad"}])


def test_values_are_parameters_not_sql(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    evil = "x'); DROP TABLE runs; --"
    run_id = store.create_run(kind="prune", model=evil, method=evil, spec={"model": evil})
    assert store.runs().loc[0, "model"] == evil
    assert store.frame("SELECT model FROM runs WHERE id = ?", [run_id]).iloc[0, 0] == evil


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = Store(path)
    old.migrate(target=1)
    assert old.schema_version() == 1
    with old.transaction() as con:
        con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                    "status) VALUES ('own', 'prune', 'm', 'wanda', 'unstructured', '{}', 'h', "
                    "'done')")
        con.execute("INSERT INTO metrics (run_id, kind, dataset, metric, value) "
                    "VALUES (1, 'perplexity', 'wikitext2', 'ppl', 7.5)")
    upgraded = Store(path).init()
    assert upgraded.schema_version() == SCHEMA_VERSION
    frame = queries.metric_rows(upgraded)
    assert frame["value"].tolist() == [7.5] and "raw" in frame.columns
    assert upgraded.frame("SELECT count(*) FROM run_logs").iloc[0, 0] == 0  # migration 2


def test_migration_marks_earlier_runs_with_the_rules_they_ran_with(tmp_path: Path) -> None:
    """Runs stored before the reference selection rules (migration 8): their specs say
    'exact' and data protocol 1, so they are not taken for runs with the new defaults."""
    from core.runs.kinds.prune import PruneSpec

    old = Store(tmp_path / "old.duckdb")
    old.migrate(target=7)
    pruned = PruneSpec(method="wanda").to_dict()
    for key in ("selection", "data_protocol"):
        pruned.pop(key)
    dense = {**pruned, "method": "dense"}
    specs = {"prune": pruned, "dense": dense, "activation": {"method": "coreinfer"},
             "sweep": {"base": pruned, "grid": {"sparsity": ["0.5"]}}}
    with old.transaction() as con:
        for name, spec in specs.items():
            kind = "prune" if name == "dense" else name
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                        "status) VALUES ('own', ?, 'm', ?, 'unstructured', ?, ?, 'done')",
                        [kind, spec.get("method", "sweep"), json.dumps(spec), f"h-{name}"])
        con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                    "status) VALUES ('published', 'prune', 'm', 'wanda', 'unstructured', "
                    "'{\"table\": \"T\"}', 'h-pub', 'done')")
    store = Store(old.path).init()
    rows = store.frame("SELECT spec, spec_hash FROM runs ORDER BY id")
    got = [json.loads(text) for text in rows["spec"]]
    assert got[0] == {**pruned, "selection": "exact", "data_protocol": 1}
    assert got[1] == {**dense, "data_protocol": 1}
    assert got[2] == {"method": "coreinfer", "selection": "exact", "data_protocol": 1}
    assert got[3]["base"] == got[0] and got[4] == {"table": "T"}
    assert rows["spec_hash"].tolist() == ["h-prune", "h-dense", "h-activation", "h-sweep", "h-pub"]
    earlier = PruneSpec.from_dict(got[0])
    assert (earlier.selection, earlier.data_protocol) == ("exact", 1)
    assert earlier.identity() != PruneSpec(method="wanda").identity()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with store.transaction() as con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer"):
        Store(store.path).init()


def test_corrupt_file_gives_clear_error_and_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "results.duckdb"
    garbage = b"this is not a database" * 500
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a readable DuckDB file|could not be opened"):
        Store(path).init()
    assert path.read_bytes() == garbage


def test_read_only_file_is_served_read_only(tmp_path: Path, monkeypatch) -> None:
    store = make_store(tmp_path)
    store.create_run(kind="prune", model="m", method="wanda", spec={})
    monkeypatch.setattr(store_module, "_writable", lambda _path: False)
    readonly = Store(store.path).init()
    assert readonly.writable is False
    assert len(readonly.runs()) == 1
    with pytest.raises(StoreError, match="read-only"):
        readonly.create_run(kind="prune", model="m", method="wanda", spec={})


def test_lock_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=hold_lock, args=(str(store.path), 1.5, ready))
    proc.start()
    assert ready.wait(30)
    started = time.monotonic()
    assert store.get_meta("holder") == "x"  # retried until the other process let go
    assert time.monotonic() - started > 0.3
    proc.join(10)


def test_lock_never_released_gives_clear_error(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=hold_lock, args=(str(store.path), 4, ready))
    proc.start()
    assert ready.wait(30)
    impatient = Store(store.path, retries=3, max_wait=0.05)
    with pytest.raises(StoreError, match="locked"):
        impatient.runs()
    proc.join(10)


def test_migration_9_keeps_every_run_and_gives_them_no_name_notes_or_tags(
        tmp_path: Path) -> None:
    """A file of schema 8 (before run names): every row stays as it was, and the new columns
    are empty; the runs can be named and archived after the upgrade."""
    old = Store(tmp_path / "old.duckdb")
    old.migrate(target=8)
    with old.transaction() as con:
        for origin, status, digest in (("own", "done", "h1"), ("own", "queued", "h2"),
                                       ("published", "done", "h3")):
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                        "status, active_hash) VALUES (?, 'prune', 'm', 'wanda', 'unstructured', "
                        "'{\"seed\": 1}', ?, ?, ?)",
                        [origin, digest, status, digest if status == "queued" else None])
        con.execute("INSERT INTO metrics (run_id, kind, dataset, metric, value) "
                    "VALUES (1, 'perplexity', 'wikitext2', 'ppl', 7.5)")
    columns = "id, origin, status, spec, spec_hash, active_hash, created_at"
    before = old.frame(f"SELECT {columns} FROM runs ORDER BY id")
    upgraded = Store(old.path).init()
    assert upgraded.schema_version() == SCHEMA_VERSION
    after = upgraded.frame(f"SELECT {columns} FROM runs ORDER BY id")
    assert after.equals(before)
    meta = upgraded.frame("SELECT name, notes, tags, archived_at FROM runs ORDER BY id")
    assert meta.isna().all().all() and len(meta) == 3
    assert upgraded.frame("SELECT value FROM metrics")["value"].tolist() == [7.5]
    assert upgraded.archive([1]) == [1]


def test_migration_10_keeps_every_row_and_windows_come_back_with_their_rows(
        tmp_path: Path) -> None:
    """A file of schema 9 keeps its runs and metrics; its perplexities have no windows (no
    interval), a new run's windows come back on its perplexity rows, also through a result
    held on disk while the file was busy."""
    from core.runs.results import RunResult
    from core.store import record

    old = Store(tmp_path / "old.duckdb")
    old.migrate(target=9)
    with old.transaction() as con:
        for digest in ("h1", "h2"):
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                        "status) VALUES ('own', 'prune', 'm', 'dense', 'dense', '{}', ?, "
                        "'done')", [digest])
        con.execute("INSERT INTO metrics (run_id, kind, dataset, metric, value) "
                    "VALUES (1, 'perplexity', 'wikitext2', 'ppl', 7.5)")
    before = old.frame("SELECT * FROM metrics")
    upgraded = Store(old.path).init()
    assert upgraded.schema_version() == SCHEMA_VERSION
    assert upgraded.frame("SELECT * FROM metrics").equals(before)
    assert queries.metric_rows(upgraded, "perplexity")["nlls"].tolist() == [None]
    result = RunResult(metrics=[{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                                 "value": 9.0}],
                       windows=[{"dataset": "wikitext2", "nlls": [2.0, 2.4, 2.2]}])
    assert record.decode(record.encode(result)) == result
    upgraded.add_metrics(2, result.metrics)
    upgraded.add_window_nlls(2, result.windows)
    rows = queries.metric_rows(upgraded, "perplexity").set_index("run_id")
    assert rows.loc[1, "nlls"] is None and list(rows.loc[2, "nlls"]) == [2.0, 2.4, 2.2]


def test_an_empty_results_path_setting_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import config

    monkeypatch.setenv("SPARSEBENCH_DB", "")
    assert config.db_path() == config.REPO_ROOT / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", "/tmp/x.duckdb")
    assert config.db_path() == Path("/tmp/x.duckdb")
