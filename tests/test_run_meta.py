"""A run's name, notes and tags (issue 16): checked, stored beside the spec (never changing its
hash or which runs are identical), applied by the launch submit and the CLI, and archive /
restore, which published figures and active runs refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli
from core.execution import jobs
from core.runs.kinds.prune import PruneSpec
from core.store import meta
from core.store.db import Store
from core.store.meta import RunMeta
from core.store.record import create_run
from tests.tiny_assets import model_and_text


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return model_and_text(tmp_path_factory.mktemp("meta-assets"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "r.duckdb").init()


def spec(assets: dict[str, str], **change: object) -> PruneSpec:
    return PruneSpec(**{"model": assets["model"], "method": "magnitude", "sparsity": "0.5",
                        "ppl_datasets": [assets["text"]], "ppl_seqlen": 32, "max_windows": 2,
                        "batch_size": 1, **change})


def stored(store: Store, run_id: int) -> RunMeta:
    row = store.frame("SELECT name, notes, tags FROM runs WHERE id = ?", [run_id]).iloc[0]
    return meta.from_row(row["name"], row["notes"], row["tags"])


def finished(store: Store, run_id: int) -> int:
    assert store.move(run_id, "running") and store.move(run_id, "done")
    return run_id


# -- checking --------------------------------------------------------------------------------
def test_names_notes_and_tags_are_checked_and_kept_as_typed() -> None:
    checked = meta.check("  <b>x</b> **y**  ", "line 1\n  <i>two</i>\n",
                         [" paper ", "llama-7b", "Paper", "a.b:c/d_e f"])
    assert checked == RunMeta("<b>x</b> **y**", "line 1\n  <i>two</i>\n",
                              ("paper", "llama-7b", "a.b:c/d_e f"))
    assert meta.check("", "   ", []) == RunMeta()
    assert meta.split_tags(["a, b", " ,c,", ""]) == ["a", " b", "c"]
    assert meta.check("x" * meta.NAME_CHARS).name == "x" * meta.NAME_CHARS
    assert len(meta.check(tags=[f"t{i}" for i in range(20)] + ["T0"]).tags) == 20


@pytest.mark.parametrize(("values", "expected"), [
    ({"name": "x" * 121}, ["Run name:", "121 characters", "at most 120"]),
    ({"notes": "x" * 5001}, ["Notes:", "5001 characters", "at most 5000"]),
    ({"tags": ["ok", "<b>"]}, ["Tags:", "'<b>'", "'<'", "letters, digits, spaces and - _ . : /"]),
    ({"tags": ["x" * 41]}, ["Tags:", "41 characters", "1 to 40"]),
    ({"tags": ["  "]}, ["Tags:", "0 characters", "1 to 40"]),
    ({"tags": [f"t{i}" for i in range(21)]}, ["Tags:", "21 tags", "at most 20"]),
])
def test_a_bad_value_names_its_field_what_is_wrong_and_what_is_allowed(
        values: dict, expected: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        meta.check(**values)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


# -- the store -------------------------------------------------------------------------------
def test_metadata_is_stored_verbatim_and_changes_no_identity(store: Store,
                                                             assets: dict[str, str]) -> None:
    first = spec(assets)
    run_id = finished(store, create_run(store, first, meta=meta.check("a", None, ["x"])))
    before = store.frame("SELECT spec, spec_hash FROM runs WHERE id = ?", [run_id])
    store.set_meta(run_id, meta.check("<script>alert(1)</script>", "# not a heading",
                                      ["y", "z"]))
    assert stored(store, run_id) == RunMeta("<script>alert(1)</script>", "# not a heading",
                                            ("y", "z"))
    after = store.frame("SELECT spec, spec_hash FROM runs WHERE id = ?", [run_id])
    assert after.equals(before)
    assert "name" not in json.loads(after["spec"].iloc[0])
    again = jobs.submit(store, spec(assets), meta=meta.check("b", "other notes", ["x"]))
    assert again.reused and again.run_id == run_id  # still the identical run
    store.set_meta(run_id, RunMeta())  # cleared
    assert stored(store, run_id) == RunMeta()


def test_a_reused_run_gets_only_what_it_lacks(store: Store, assets: dict[str, str]) -> None:
    first = jobs.submit(store, spec(assets), meta=meta.check("mine", None, ["a"]))
    assert not first.reused and stored(store, first.run_id) == RunMeta("mine", None, ("a",))
    baseline = stored(store, first.baseline_id)
    assert baseline == RunMeta()  # the shared dense baseline is never named by a submit
    again = jobs.submit(store, spec(assets), meta=meta.check("theirs", "n", ["b", "A"]))
    assert again.reused and again.run_id == first.run_id
    assert (again.meta_set, again.meta_kept) == (("notes", "tags"), ("name",))
    assert stored(store, first.run_id) == RunMeta("mine", "n", ("a", "b"))
    plain = jobs.submit(store, spec(assets))
    assert plain.reused and (plain.meta_set, plain.meta_kept) == ((), ())
    assert stored(store, first.run_id) == RunMeta("mine", "n", ("a", "b"))


def test_a_sweep_names_itself_and_its_cells(store: Store, assets: dict[str, str]) -> None:
    named = meta.check("grid", "seeds 0 and 1", ["sweep"])
    submission = jobs.submit_sweep(store, spec(assets), {"seed": [0, 1]}, meta=named)
    for run_id in (submission.sweep_id, *submission.run_ids):
        assert stored(store, run_id) == named
    baseline = store.frame("SELECT id FROM runs WHERE method = 'dense'")["id"].tolist()
    assert len(baseline) == 1 and stored(store, int(baseline[0])) == RunMeta()


def test_a_rerun_keeps_the_name_notes_and_tags(store: Store, assets: dict[str, str]) -> None:
    run_id = finished(store, create_run(store, spec(assets), meta=meta.check("n", "x", ["t"])))
    new_id = jobs.rerun(store, run_id)
    assert new_id != run_id and stored(store, new_id) == RunMeta("n", "x", ("t",))


def test_archive_and_restore(store: Store, assets: dict[str, str]) -> None:
    done = finished(store, create_run(store, spec(assets)))
    failed = create_run(store, spec(assets, seed=1))
    assert store.move(failed, "failed", error="boom")
    assert store.archive([done, failed]) == [done, failed]
    assert store.archive([done]) == []  # already archived: nothing changes
    archived = store.frame("SELECT id, archived_at FROM runs ORDER BY id")
    assert archived["archived_at"].notna().all()
    assert store.restore([done]) == [done] and store.restore([done]) == []
    left = store.frame("SELECT id FROM runs WHERE archived_at IS NOT NULL")["id"].tolist()
    assert left == [failed]
    assert store.frame("SELECT count(*) FROM runs").iloc[0, 0] == 2  # nothing was deleted


def test_active_runs_cannot_be_archived(store: Store, assets: dict[str, str]) -> None:
    queued = create_run(store, spec(assets))
    running = create_run(store, spec(assets, seed=1))
    done = finished(store, create_run(store, spec(assets, seed=2)))
    assert store.move(running, "running")
    with pytest.raises(ValueError, match=f"Run {queued} is still queued or running .* cancel "
                                         "it first, then archive it"):
        store.archive([queued])
    with pytest.raises(ValueError, match=f"Runs {queued} and {running} are .* cancel them"):
        store.archive([done, queued, running])
    assert store.frame("SELECT count(*) FROM runs WHERE archived_at IS NOT NULL").iloc[0, 0] == 0
    with pytest.raises(ValueError, match="There is no run 99"):
        store.archive([99])


def test_published_runs_are_never_edited_or_archived(published_store: Store) -> None:
    run_id = int(published_store.frame("SELECT min(id) FROM runs WHERE origin = 'published'"
                                       ).iloc[0, 0])
    before = published_store.frame("SELECT * FROM runs WHERE id = ?", [run_id])
    for action, call in (("have its name, notes and tags changed",
                          lambda: published_store.set_meta(run_id, meta.check("x"))),
                         ("be archived", lambda: published_store.archive([run_id])),
                         ("be restored", lambda: published_store.restore([run_id]))):
        with pytest.raises(ValueError) as info:
            call()
        assert f"Run {run_id} is a published figure: it cannot {action}" in str(info.value)
        assert "never edited, archived or deleted" in str(info.value)
    after = published_store.frame("SELECT * FROM runs WHERE id = ?", [run_id])
    assert after.drop(columns="tags").equals(before.drop(columns="tags"))
    with published_store.transaction() as con:  # add_meta (a submit's) leaves it alone too
        assert published_store.add_meta(run_id, meta.check("x"), con) == ((), ())


def test_metadata_changes_the_file_version_but_not_the_results(
        store: Store, assets: dict[str, str]) -> None:
    run_id = finished(store, create_run(store, spec(assets)))
    version, results = store.version(), store.results_version()
    store.set_meta(run_id, meta.check("named"))
    assert store.version() != version  # the Runs page (keyed on the file) reads it again
    assert store.results_version() == results  # the result pages keep their caches
    # archiving takes the run off the result pages (and restoring brings it back): new results
    store.archive([run_id])
    archived = store.results_version()
    assert archived != results
    assert store.archive([run_id]) == [] and store.results_version() == archived  # no change
    store.restore([run_id])
    assert store.results_version() not in (results, archived)


# -- the command line ------------------------------------------------------------------------
def test_cli_name_notes_and_tags_reach_the_stored_run(tmp_path: Path, assets: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    executed: list[list[int]] = []
    monkeypatch.setattr(cli, "run_here", lambda store, spec, run_id, run_ids:
                        executed.append(run_ids) or 0)  # no model is run here
    db = str(tmp_path / "cli.duckdb")
    args = ["--db", db, "prune", "--model", assets["model"], "--method", "magnitude",
            "--eval", assets["text"], "--ppl-seqlen", "32", "--max-windows", "2"]
    assert cli.main([*args, "--name", "<b>first</b>", "--notes", "two\nlines", "--tag",
                     "paper", "--tag", "tiny, cpu"]) == 0
    store = Store(db)
    runs = store.frame("SELECT id, method FROM runs ORDER BY id")
    assert runs["method"].tolist() == ["magnitude", "dense"] and len(executed) == 1
    run_id = int(runs["id"].iloc[0])
    assert stored(store, run_id) == RunMeta("<b>first</b>", "two\nlines", ("paper", "tiny", "cpu"))
    assert stored(store, int(runs["id"].iloc[1])) == RunMeta()  # the baseline
    capsys.readouterr()
    assert cli.main([*args, "--name", "second", "--tag", "extra"]) == 0  # identical: reused
    out = capsys.readouterr().out
    assert f"an identical run {run_id} is queued" in out
    assert f"Run {run_id} got the tags given here" in out
    assert f"Run {run_id} keeps its own name" in out
    assert stored(store, run_id).name == "<b>first</b>"
    assert stored(store, run_id).tags == ("paper", "tiny", "cpu", "extra")
    assert cli.main([*args, "--seed", "3", "--name", "x" * 121]) == 2
    assert "Run name: 121 characters is too long" in capsys.readouterr().err
    assert len(store.frame("SELECT id FROM runs")) == 2  # nothing queued for a bad name


def test_cli_archives_restores_and_lists(tmp_path: Path, assets: dict[str, str],
                                         capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "cli.duckdb"
    store = Store(db).init()
    done = finished(store, create_run(store, spec(assets), meta=meta.check("kept", tags=["t"])))
    queued = create_run(store, spec(assets, seed=1))
    assert cli.main(["--db", str(db), "archive", str(queued)]) == 2
    assert "cancel it first" in capsys.readouterr().err
    assert cli.main(["--db", str(db), "archive", str(done)]) == 0
    assert f"archived: {done}" in capsys.readouterr().out
    cli.main(["--db", str(db), "runs"])
    listed = capsys.readouterr().out
    assert "kept" not in listed and str(queued) in listed
    cli.main(["--db", str(db), "runs", "--archived"])
    assert "kept" in capsys.readouterr().out
    assert cli.main(["--db", str(db), "restore", str(done)]) == 0
    cli.main(["--db", str(db), "runs"])
    assert "kept" in capsys.readouterr().out
