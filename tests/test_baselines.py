"""The dense baseline chosen by SQL (core.analysis.baselines) equals the row-by-row Python rule it
replaced (kept here as the reference), on the published figures and on random frames with ties;
the setting columns' migration keeps every row."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pytest

from core.analysis import baselines
from core.present import tables
from core.store import published as published_figures
from core.store.db import SETTING_COLUMNS, Store, setting_values


# -- the Python rules the SQL replaced (the tables code before the change) -----------------
def _setting(spec: Mapping[str, Any], key: str) -> Any:
    value = spec.get(key)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if value == "" else value


def _differs(spec: Mapping[str, Any], other: Mapping[str, Any], keys: Sequence[str]) -> bool:
    return any(_setting(spec, k) != _setting(other, k) for k in keys)


def python_ppl_pick(cands: list[dict], row: dict) -> dict | None:
    spec = row["spec"]
    if row["group"] == tables.OWN_GROUP:
        cands = [c for c in cands if not _differs(c["spec"], spec, baselines.PPL_SETTINGS)]
    if not cands:
        return None
    return max(cands, key=lambda c: (
        *(_setting(c["spec"], k) == _setting(spec, k) for k in baselines.PPL_PREFERENCE),
        c["status"] == "ok", c["run_id"]))


def python_zs_pick(rec: dict, dense: list[dict], values: dict, attempted: dict) -> dict | None:
    if rec["dense"]:
        return rec
    cands = [d for d in dense if (d["model"], d["group"]) == (rec["model"], rec["group"])]
    if rec["group"] == tables.OWN_GROUP:
        cands = [d for d in cands if not _differs(d["spec"], rec["spec"], baselines.ZS_SETTINGS)]
    if not cands:
        return None
    mine = values.get(rec["run_id"], {}).keys()
    return max(cands, key=lambda d: (len(values.get(d["run_id"], {}).keys() & mine),
                                     attempted.get(d["run_id"]) == attempted.get(rec["run_id"]),
                                     d["run_id"]))


# -- comparing the two ---------------------------------------------------------------------------
def assert_same_perplexity_picks(rows: pd.DataFrame) -> int:
    """Every row's SQL baseline is the Python one; returns how many rows have a baseline."""
    df = rows[rows["kind"] == "perplexity"].reset_index(drop=True)
    records = df.to_dict("records")
    dense: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec["dense"]:
            dense.setdefault((rec["model"], rec["dataset"], rec["metric"], rec["group"]),
                             []).append(rec)
    chosen = baselines.perplexity_baselines(df)
    found = 0
    for rec, pos in zip(records, chosen, strict=True):
        key = (rec["model"], rec["dataset"], rec["metric"], rec["group"])
        expected = python_ppl_pick(dense.get(key, []), rec)
        got = records[int(pos)] if pos == pos else None
        assert (got and got["run_id"]) == (expected and expected["run_id"]), rec
        found += got is not None
    return found


def assert_same_zero_shot_picks(rows: pd.DataFrame) -> int:
    scores = tables.zero_shot_scores(rows)
    runs = scores.drop_duplicates("run_id")
    records = runs.to_dict("records")
    values: dict[int, dict[str, float]] = {}
    for rec in scores.to_dict("records"):
        if rec["status"] == "ok" and rec["value"] == rec["value"] and rec["value"] is not None:
            values.setdefault(rec["run_id"], {})[rec["dataset"]] = rec["value"]
    attempted = scores.groupby("run_id")["dataset"].agg(set).to_dict()
    dense = [r for r in records if r["dense"]]
    chosen = baselines.zero_shot_baselines(scores, runs)
    for rec in records:
        expected = python_zs_pick(rec, dense, values, attempted)
        assert chosen.get(rec["run_id"]) == (expected and expected["run_id"]), rec
    return len(chosen)


def test_published_figures_get_the_same_baselines(published_store: Store) -> None:
    assert assert_same_perplexity_picks(tables.load_metrics(published_store, "perplexity")) > 50
    assert assert_same_zero_shot_picks(tables.load_metrics(published_store, "zero_shot")) >= 5


# -- random frames with ties: equal settings written differently, missing values, repeats --------
SETTINGS = {"ppl_seqlen": [None, 128, 128.0, 256], "max_windows": [None, 4, 4.0, ""],
            "dtype": [None, "float32", "float16", ""], "seqlen": [None, 2048, 4096],
            "table": [None, "", "T1", "T2"], "num_fewshot": [None, 0, 0.0, 5],
            "zs_limit": [None, 40, 40.0, 20]}
TASKS = ("piqa", "boolq", "rte", "arc_easy")


def random_rows(seed: int, runs: int = 120) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for run_id in rng.sample(range(1, 10 * runs), runs):  # ids not in row order
        dense = rng.random() < 0.3
        published = rng.random() < 0.3
        spec = {k: v for k, choices in SETTINGS.items()
                if (v := rng.choice(choices)) is not None or rng.random() < 0.5}
        run = {"run_id": run_id, "origin": "published" if published else "own",
               "source": rng.choice(["Paper A", "Paper B"]) if published else None,
               "run_kind": "prune", "model": rng.choice(["m1", "m2"]),
               "method": "dense" if dense else rng.choice(["wanda", "magnitude"]),
               "sparsity": 0.0 if dense else rng.choice([0.5, 0.6]),
               "pattern": "dense" if dense else "unstructured", "spec": json.dumps(spec),
               "run_status": "done", "stderr": None, "n_samples": None, "raw": None,
               "note": None}
        for dataset in rng.sample(["wikitext2", "ptb"], rng.randint(1, 2)):
            status = rng.choice(["ok", "ok", "ok", "diverged", "missing"])
            rows.append({**run, "kind": "perplexity", "dataset": dataset, "metric": "ppl",
                         "status": status, "value": rng.uniform(5, 9) if status == "ok" else None})
        for task in rng.sample(TASKS, rng.randint(1, 4)):
            status = rng.choice(["ok", "ok", "ok", "missing"])
            rows.append({**run, "kind": "zero_shot", "dataset": task, "metric": "acc",
                         "status": status, "value": rng.random() if status == "ok" else None,
                         "note": "task failed: boom" if status == "missing" else None})
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_random_frames_get_the_same_baselines(seed: int) -> None:
    rows = tables.prepare(pd.DataFrame(random_rows(seed)))
    assert assert_same_perplexity_picks(rows) > 0
    assert assert_same_zero_shot_picks(rows) > 0


def test_rows_without_a_baseline_say_why() -> None:
    rows = tables.prepare(pd.DataFrame(random_rows(3)))
    shown = tables.perplexity_table(rows).frame
    lacking = shown[shown["_baseline_run"].isna() & (shown["_status"] == "ok")
                    & (shown["_method"] != "dense")]
    assert not lacking.empty
    assert lacking["Note"].str.contains("Δ not computed").all()


# -- the migration that adds the setting columns -------------------------------------------------
def test_migration_fills_the_setting_columns_and_keeps_every_row(tmp_path) -> None:
    store = Store(tmp_path / "old.duckdb")
    store.migrate(target=5)
    specs = [{"ppl_seqlen": 128.0, "dtype": "float32"}, {"table": "T1", "zs_limit": ""}, {}]
    with store.transaction() as con:
        for i, spec in enumerate(specs):
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                        "status) VALUES ('own', 'prune', 'm', 'wanda', 'unstructured', ?, ?, "
                        "'done')", [json.dumps(spec), f"h{i}"])
            con.execute("INSERT INTO metrics (run_id, kind, dataset, metric, value) "
                        "VALUES (currval('run_ids'), 'perplexity', 'wikitext2', 'ppl', ?)", [i])
    before = store.frame("SELECT * FROM runs ORDER BY id")
    store.migrate(target=6)
    after = store.frame("SELECT * FROM runs ORDER BY id")
    pd.testing.assert_frame_equal(after[before.columns], before)
    columns = list(SETTING_COLUMNS.values())
    written = [[None if v != v else v for v in row] for row in after[columns].to_numpy().tolist()]
    assert written == [setting_values(spec) for spec in specs]
    assert written[0][:4] == [None, "128", None, "float32"]
    assert store.frame("SELECT count(*) AS n FROM metrics")["n"].tolist() == [3]


# -- the layer summaries kept beside the layer rows ------------------------------------------------
def counted(store: Store) -> dict[int, tuple[int, int]]:
    """Each run's blocks with a measured sparsity and layer rows, counted from the rows."""
    frame = store.frame("""SELECT run_id, count(DISTINCT block) FILTER (
                               WHERE layer = 'block' AND stat = 'sparsity'), count(*)
                           FROM layer_stats GROUP BY run_id""")
    return {int(r): (int(b), int(n)) for r, b, n in frame.itertuples(index=False)}


def summaries(store: Store) -> dict[int, tuple[int, int]]:
    frame = store.frame("SELECT run_id, blocks, layer_rows FROM layer_summaries")
    return {int(r): (int(b), int(n)) for r, b, n in frame.itertuples(index=False)}


def block_rows(blocks: int) -> list[dict[str, Any]]:
    rows = [{"block": b, "layer": "block", "stat": "sparsity", "value": 0.5}
            for b in range(blocks)]
    rows += [{"block": b, "layer": "mlp.up_proj", "stat": "sparsity", "value": 0.5}
             for b in range(blocks)]
    return rows + [{"block": None, "layer": "model", "stat": "mean", "value": 0.5}]


def test_layer_summaries_follow_every_write(tmp_path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    published_figures.sync(store)
    first = store.create_run(kind="prune", model="m", method="wanda", spec={}, status="done")
    second = store.create_run(kind="prune", model="m", method="wanda", spec={"a": 1})
    store.add_layer_stats(first, block_rows(3))
    store.add_rows(layer_stats=[(second, r) for r in block_rows(2)])
    store.add_layer_stats(first, [{"block": 7, "layer": "block", "stat": "sparsity",
                                   "value": 0.4}])
    found = summaries(store)
    assert found == counted(store)
    assert found[first] == (4, 8) and found[second] == (2, 5)
    assert any(run_id < 0 for run_id in found)  # the published layer statistics
    with store.transaction() as con:  # the figures changed: they are imported again
        con.execute("UPDATE meta SET value = 'old' WHERE key = 'published_fingerprint'")
    assert published_figures.sync(store)
    assert summaries(store) == counted(store) == found
    frame = tables.load_layer_runs(store).set_index("run_id")
    assert frame.loc[first, "blocks"] == 4


def test_migration_counts_the_layer_rows_already_stored(tmp_path) -> None:
    store = Store(tmp_path / "old.duckdb")
    store.migrate(target=6)
    with store.transaction() as con:
        con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                    "status) VALUES ('own', 'prune', 'm', 'wanda', 'unstructured', '{}', 'h', "
                    "'done')")
        for row in block_rows(5):
            con.execute("INSERT INTO layer_stats (run_id, block, layer, stat, value) "
                        "VALUES (currval('run_ids'), ?, ?, ?, ?)",
                        [row["block"], row["layer"], row["stat"], row["value"]])
    rows_before = store.frame("SELECT count(*) FROM layer_stats").iloc[0, 0]
    store.init()
    assert summaries(store) == counted(store) == {1: (5, 11)}
    assert store.frame("SELECT count(*) FROM layer_stats").iloc[0, 0] == rows_before
