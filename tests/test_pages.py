"""The Streamlit pages under ``streamlit.testing.v1.AppTest``: each page runs, shows the reference
tables, offers downloads of exactly the shown table, and survives a broken results file."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core import export, published, tables
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/overview.py", "pages/perplexity.py", "pages/zero_shot.py",
         "pages/activation_sparsity.py"]
TABLE_PAGES = PAGES[1:]
TIMEOUT = 60


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", str(path))
    return path


@pytest.fixture
def store(db: Path) -> Store:
    return Store().init()


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes behind every download button, by media file id (AppTest keeps only the URL)."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = path_or_data if isinstance(path_or_data, bytes) else b""
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return files


def run(script: str) -> AppTest:
    return AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT).run()


def download_data(button, files: dict[str, bytes]) -> str:  # noqa: ANN001
    file_id = Path(button.proto.url).stem
    return files[file_id].decode("utf-8")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_on_the_published_figures(store: Store, page: str) -> None:
    at = run(page)
    assert_clean(at)
    assert at.dataframe, "every page shows at least one table"
    for frame in at.dataframe:
        assert not frame.value.astype(str).apply(lambda c: c.str.lower().eq("nan")).any().any()


def test_perplexity_page_shows_the_wanda_readme_reference(store: Store) -> None:
    at = run("pages/perplexity.py")
    assert_clean(at)
    shown = at.dataframe[0].value
    row = shown[(shown["Model"] == "Llama-2-7b-hf") & (shown["Method"] == "Wanda 50%")
                & (shown["Source"] == "Wanda README (Sun et al. 2023)")]
    assert row["PPL"].tolist() == ["6.42"]
    assert row["Origin"].tolist() == ["Published"]
    assert at.get("plotly_chart"), "the perplexity chart is drawn"


def test_shown_table_is_what_the_core_builds(store: Store) -> None:
    at = run("pages/perplexity.py")
    expected = tables.perplexity_table(tables.load_metrics(store, "perplexity")).display()
    shown = at.dataframe[0].value
    assert shown.reset_index(drop=True).astype(str).equals(expected.astype(str))


@pytest.mark.parametrize("page", TABLE_PAGES)
def test_downloads_are_exactly_the_shown_tables(store: Store, downloads: dict[str, bytes],
                                                page: str) -> None:
    at = run(page)
    assert_clean(at)
    buttons = list(at.download_button)
    assert len(buttons) == 2 * len(at.dataframe)
    for i, frame in enumerate(at.dataframe):
        shown = frame.value.reset_index(drop=True)
        csv_button, md_button = buttons[2 * i], buttons[2 * i + 1]
        assert (csv_button.label, md_button.label) == ("CSV", "Markdown")
        csv_text = download_data(csv_button, downloads)
        md_text = download_data(md_button, downloads)
        assert csv_text == export.to_csv(shown)
        assert md_text == export.to_markdown(shown)
        assert export.parse_markdown(md_text).values.tolist() == shown.values.tolist()
        back = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
        assert back.values.tolist() == shown.astype(str).values.tolist()


def test_app_opens_the_store_and_navigates(store: Store) -> None:
    at = run("app.py")
    assert_clean(at)
    assert any("SPARSEBENCH_DB" in c.value for c in at.sidebar.caption)
    at.switch_page(str(ROOT / "pages/perplexity.py")).run()
    assert_clean(at)
    assert "6.42" in at.dataframe[0].value["PPL"].tolist()


def test_own_runs_are_told_apart_from_published(store: Store) -> None:
    run_id = store.create_run(kind="prune", model="Llama-2-7b-hf", method="wanda", sparsity=0.5,
                              spec={"model": "Llama-2-7b-hf", "method": "wanda", "seqlen": 4096},
                              status="done")
    store.add_metrics(run_id, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                                "value": 6.43}])
    at = run("pages/perplexity.py")
    assert_clean(at)
    shown = at.dataframe[0].value
    own = shown[shown["Run"] == str(run_id)]
    assert own[["Origin", "PPL"]].values.tolist() == [["Own run", "6.43"]]
    assert own["Δ from dense"].tolist() == [""]  # no own dense run: no baseline from a paper
    at.sidebar.radio[0].set_value("Own runs").run()
    assert set(at.dataframe[0].value["Origin"]) == {"Own run"}


@pytest.mark.parametrize("script", ["app.py", *PAGES])
def test_corrupt_database_is_reported_and_left_untouched(db: Path, script: str) -> None:
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    at = run(script)
    assert not at.exception
    assert at.error, "a corrupt file must be reported with st.error"
    assert "not a readable DuckDB file" in at.error[0].value
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]


@pytest.mark.parametrize("page", TABLE_PAGES)
def test_empty_database_gives_a_helpful_info(db: Path, monkeypatch: pytest.MonkeyPatch,
                                             page: str) -> None:
    monkeypatch.setattr(published, "FIGURES", db.parent / "none.csv")
    monkeypatch.setattr(published, "TRIALS", db.parent / "none-trials.csv")
    at = run(page)
    assert not at.exception and not at.error
    assert at.info and "No " in at.info[0].value
    assert not at.dataframe


def test_empty_overview(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published, "FIGURES", db.parent / "none.csv")
    monkeypatch.setattr(published, "TRIALS", db.parent / "none-trials.csv")
    at = run("pages/overview.py")
    assert not at.exception and not at.error
    assert at.info and "empty" in at.info[0].value


def test_read_only_file_still_shows_results(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.store

    monkeypatch.setattr(core.store, "_writable", lambda path: False)
    at = run("pages/perplexity.py")
    assert_clean(at)
    assert "6.42" in at.dataframe[0].value["PPL"].tolist()


def test_locked_database_is_reported(store: Store, db: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Store.__init__, "__defaults__", (None, 3, 0.05))  # give up quickly
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        time.sleep(0.2)
        at = run("pages/perplexity.py")
        assert not at.exception
        assert at.error and "locked" in at.error[0].value
    finally:
        holder.kill()
        holder.wait()
