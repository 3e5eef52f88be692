"""Labels that tell runs apart: a spec's label words, the columns that store them, and the
tables and charts that show them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.present import charts, tables
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.prune import PruneSpec
from core.store import queries
from core.store.db import SCHEMA_VERSION, Store
from core.store.record import create_run


@pytest.mark.parametrize(("values", "words"), [
    ({"method": "wanda"}, []),
    ({"method": "wanda", "method_params": {"variant": True}}, ["variant"]),
    ({"method": "wanda", "method_params": {"variant": False}}, []),  # the default, written out
    ({"method": "wanda", "owl": {"M": 5.0, "lambda": 0.08}}, ["OWL"]),
    ({"method": "magnitude", "owl": {"M": 7.0, "lambda": 0.1}}, ["OWL M 7 λ 0.1"]),
    ({"method": "sparsegpt", "selection": "exact", "block_range": [0, 12], "dtype": "bfloat16"},
     ["blocks 0–12", "exact selection", "bfloat16"]),
    ({"method": "wanda", "samples": 128, "seed": 3}, ["calibration wiki-offline 128×512, seed 3"]),
    ({"method": "magnitude", "samples": 128, "seed": 3}, []),  # uses no calibration
    ({"method": "dense", "sparsity": "0", "samples": 128}, []),
])
def test_prune_label_words_name_what_differs_from_a_default_run(values, words) -> None:
    assert PruneSpec(model="m", **values).label_words() == words


def test_setting_words_name_the_calibration_only_where_the_method_uses_it() -> None:
    assert PruneSpec(model="m", method="wanda").setting_words() == [
        "calibration wiki-offline 32×512, seed 0", "reference selection", "auto dtype"]
    assert PruneSpec(model="m", method="magnitude", dtype="float32").setting_words() == [
        "reference selection", "float32"]
    assert PruneSpec(model="m", method="dense", sparsity="0").setting_words() == ["auto dtype"]


def test_activation_label_words() -> None:
    core = ActivationSpec(model="m", method="coreinfer", sparsity=0.4, tasks=["t"])
    assert core.label_words() == ["kept 0.4"]
    changed = ActivationSpec(model="m", method="coreinfer", sparsity=0.4, token_sparsity=0.3,
                             selection="exact", tasks=["t"])
    assert changed.label_words() == ["kept 0.4", "token sparsity 0.3", "exact selection"]
    levels = ActivationSpec(model="m", method="sparsity-levels", levels=[0.3, 0.5], tasks=["t"])
    assert levels.label_words() == ["per-block levels"]


def _store_ppl(store: Store, spec: PruneSpec, value: float) -> int:
    run_id = create_run(store, spec, status="done")
    store.add_metrics(run_id, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                                "value": value}])
    return run_id


def _three_runs(store: Store) -> list[int]:
    return [
        _store_ppl(store, PruneSpec(model="m", method="dense", sparsity="0"), 10.0),
        _store_ppl(store, PruneSpec(model="m", method="wanda", sparsity="0.5"), 12.0),
        _store_ppl(store, PruneSpec(model="m", method="wanda", sparsity="0.5",
                                    owl={"M": 5.0, "lambda": 0.08}), 11.5)]


def test_a_stored_run_carries_its_label_and_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    _three_runs(store)
    rows = store.frame("SELECT method, variant, settings FROM runs ORDER BY id")
    assert rows["variant"].tolist() == ["", "", "OWL"]
    assert rows["settings"].tolist()[0] == "auto dtype"  # dense: no calibration it never used
    assert rows["settings"].tolist()[2] == (
        "calibration wiki-offline 32×512, seed 0 · reference selection · auto dtype")


def test_tables_and_charts_tell_an_owl_run_from_the_plain_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    dense, plain, with_owl = _three_runs(store)
    rows = tables.load_metrics(store, "perplexity")
    shown = tables.perplexity_table(rows).frame.set_index("Run")
    assert shown.loc[plain, "Method"] == "Wanda 50%"
    assert shown.loc[with_owl, "Method"] == "Wanda 50% · OWL"
    assert shown.loc[with_owl, "Δ from dense"] == pytest.approx(15.0)  # the same dense baseline
    assert shown.loc[dense, "Settings"] == "auto dtype"
    figure = charts.perplexity_chart(rows)
    names = {trace.name for trace in figure.data}
    assert {"Wanda · own", "Wanda · OWL · own"} <= names, names


def test_grid_rows_keep_variants_apart(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb").init()
    _three_runs(store)
    rows = tables.load_metrics(store, "perplexity")
    labels = tables.grid_row_labels(rows[rows["method"] == "wanda"])
    assert sorted(set(labels)) == ["Wanda", "Wanda · OWL"]


def test_migration_11_labels_the_runs_already_stored_and_keeps_every_row(
        tmp_path: Path) -> None:
    """A file of schema 10: every run stays; own runs get their words from their specs, a
    spec that no kind reads keeps none (the pages fall back to its raw settings)."""
    old = Store(tmp_path / "old.duckdb")
    old.migrate(target=10)
    owl = PruneSpec(model="m", method="wanda", sparsity="0.5", owl={"M": 5.0, "lambda": 0.08})
    specs = [("own", json.dumps(owl.to_dict(), default=str)),
             ("own", json.dumps({"kind": "prune", "method": "wanda", "unknown_field": 1})),
             ("published", json.dumps({"method_params": {"alpha": 0.1}}))]
    with old.transaction() as con:
        for n, (origin, spec) in enumerate(specs):
            con.execute("INSERT INTO runs (origin, kind, model, method, pattern, spec, spec_hash, "
                        "status) VALUES (?, 'prune', 'm', 'wanda', 'unstructured', ?, ?, 'done')",
                        [origin, spec, f"h{n}"])
    before = old.frame("SELECT id, origin, spec, spec_hash, created_at FROM runs ORDER BY id")
    upgraded = Store(old.path).init()
    assert upgraded.schema_version() == SCHEMA_VERSION
    after = upgraded.frame("SELECT id, origin, spec, spec_hash, created_at FROM runs ORDER BY id")
    assert after.equals(before)
    labels = upgraded.frame("SELECT variant, settings FROM runs ORDER BY id")
    assert labels.loc[0, "variant"] == "OWL"
    assert labels.loc[0, "settings"].startswith("calibration wiki-offline 32×512")
    assert labels.loc[1:].isna().all().all()
    assert queries.metric_rows(upgraded, "perplexity").empty
