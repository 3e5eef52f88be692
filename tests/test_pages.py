"""The Streamlit pages under ``streamlit.testing.v1.AppTest``: each page runs, shows the reference
tables, offers downloads of exactly the shown table, and survives a broken results file."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core.present import export, tables
from core.store import published, queries
from core.store.db import Store
from core.store.record import create_run

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["pages/overview.py", "pages/perplexity.py", "pages/zero_shot.py",
         "pages/activation_sparsity.py", "pages/layers.py"]
TABLE_PAGES = PAGES[1:]
TIMEOUT = 60


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results.duckdb"
    monkeypatch.setenv("SPARSEBENCH_DB", str(path))
    return path


@pytest.fixture
def store(db: Path) -> Store:
    store = Store().init()
    published.sync(store)
    return store


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What is behind every download button, by media file id (AppTest keeps only the URL):
    the bytes sent with the page, or the function a click runs (a deferred download)."""
    files: dict[str, Any] = {}
    original = MemoryMediaFileStorage.load_and_get_id
    original_deferred = MediaFileManager.add_deferred

    def record(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = path_or_data if isinstance(path_or_data, bytes) else b""
        return file_id

    def record_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kw):  # noqa: ANN001
        file_id = original_deferred(self, data_callable, mimetype, coordinates, file_name, **kw)
        files[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    return files


def run(script: str) -> AppTest:
    """``script`` as a visitor opens it: app.py first (its menu defines the pages that links
    point to), then the page."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    if script != "app.py":
        at.switch_page(str(ROOT / script)).run()
    return at


def run_alone(script: str) -> AppTest:
    """``script`` run on its own, without app.py (as Streamlit runs a page URL opened first)."""
    return AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT).run()


def download_data(button, files: dict[str, Any]) -> str:  # noqa: ANN001
    """The text a click on ``button`` downloads (running a deferred download's function)."""
    if button.proto.deferred_file_id:
        data = files[button.proto.deferred_file_id]()
        return data if isinstance(data, str) else data.decode("utf-8")
    return files[Path(button.proto.url).stem].decode("utf-8")


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


def test_pruning_times_are_read_when_their_expander_opens(store: Store) -> None:
    """The Pruning time expander is lazy: closed, no time table is built; opened (its state
    key set, as a click does), the times of the published tables are shown."""
    at = run("pages/perplexity.py")
    assert [e.label for e in at.expander] == ["Pruning time"]
    assert not any("Time (s)" in f.value.columns for f in at.dataframe)
    at.session_state["ppl-timing"] = True
    at.run()
    assert_clean(at)
    times = [f.value for f in at.dataframe if "Time (s)" in f.value.columns]
    assert len(times) == 1 and len(times[0]) > 0


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
    assert len(buttons) == 3 * len(at.dataframe)
    for i, frame in enumerate(at.dataframe):
        shown = frame.value.reset_index(drop=True)
        csv_button, md_button, tex_button = buttons[3 * i:3 * i + 3]
        assert (csv_button.label, md_button.label, tex_button.label) == ("CSV", "Markdown",
                                                                          "LaTeX")
        csv_text = download_data(csv_button, downloads)
        md_text = download_data(md_button, downloads)
        tex_text = download_data(tex_button, downloads)
        exported = export.parse_markdown(md_text)
        assert list(exported.columns) == list(shown.columns) and len(exported) == len(shown)
        assert_csv_is_the_shown_numbers(csv_text, shown)
        for shown_cell, exported_cell in zip(shown.values.flat, exported.values.flat,
                                             strict=True):
            assert same_but_as_precise(shown_cell, exported_cell), (shown_cell, exported_cell)
        assert "\\toprule" in tex_text and "\\bottomrule" in tex_text
        assert export.parse_latex(tex_text).values.tolist() == exported.values.tolist()
        assert list(export.parse_latex(tex_text).columns) == list(shown.columns)


def assert_csv_is_the_shown_numbers(csv_text: str, shown: pd.DataFrame) -> None:
    """The CSV download, read by pandas, has a numeric column for each shown column of numbers
    (named with its unit where it shows '%'), each number the shown one to its decimals, one
    count of decimals per column; a word shown instead of a number sits in its note column."""
    back = pd.read_csv(io.StringIO(csv_text))
    raw = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    assert len(back) == len(shown)
    if "Run" in raw:  # own runs' ids; published rows have none (their Source says)
        assert not any(text.startswith("-") for text in raw["Run"])
    for column in shown.columns:
        name = next((c for c in (column, f"{column} (%)", f"{column} (points)") if c in back),
                    None)
        cells = [c for c in shown[column] if str(c).strip()]
        if cells and all(export.cell_number(c) is not None for c in cells):
            assert name is not None and pd.api.types.is_numeric_dtype(back[name]), column
        if name is None or not pd.api.types.is_numeric_dtype(back[name]):
            continue
        assert "%" in name or not any(str(c).endswith("%") for c in cells), name
        places = {len(t.split(".")[1]) if "." in t else 0 for t in raw[name] if t}
        assert len(places) <= 1, (name, places)  # one precision per column
        notes = back.get(f"{name} note")
        for i, (cell, number) in enumerate(zip(shown[column], back[name], strict=True)):
            value = export.cell_number(cell)
            if value is None:  # a word: in the note column (beside any number behind it)
                assert not str(cell).strip() or notes[i] == cell, (column, cell)
                continue
            decimals = len(str(cell).rstrip("%").split(".")[1]) if "." in str(cell) else 0
            assert abs(number - value) <= 0.5 * 10 ** -decimals + 1e-9, (column, cell, number)


NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*\.\d+")


def same_but_as_precise(shown: str, exported: str) -> bool:
    """The exported cell says what the shown one says, its decimal numbers with at least as many
    decimals, each rounding to the shown number."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", exported):
        return False
    for short, long in zip(NUMBER.findall(shown), NUMBER.findall(exported), strict=True):
        places = len(short.split(".")[1])
        if len(long.split(".")[1]) < places:
            return False
        difference = abs(float(long.replace(",", "")) - float(short.replace(",", "")))
        if difference > 0.5 * 10 ** -places + 1e-9:  # the shown number is the long one rounded
            return False
    return True


def test_exports_keep_the_precision_of_the_source(store: Store,
                                                  downloads: dict[str, bytes]) -> None:
    """Seed 000 prints Wanda 50% at 6.4154: the page shows 6.42, the Markdown says 6.4154
    (and 6.42 for a source printed at 2 decimals); the CSV holds numbers, one precision a
    column, and no published row's internal id."""
    at = run("pages/perplexity.py")
    shown = at.dataframe[0].value
    seed = shown[(shown["Method"] == "Wanda 50%")
                 & shown["Source"].str.startswith("Seed report 000")]
    assert seed["PPL"].tolist() == ["6.42"]
    md = export.parse_markdown(download_data(at.download_button[1], downloads))
    row = md[(md["Method"] == "Wanda 50%") & md["Source"].str.startswith("Seed report 000")]
    assert row["PPL"].tolist() == ["6.4154"]
    readme = md[(md["Method"] == "Wanda 50%") & (md["Model"] == "Llama-2-7b-hf")
                & (md["Source"] == "Wanda README (Sun et al. 2023)")]
    assert readme["PPL"].tolist() == ["6.42"]  # printed with 2 decimals: kept at 2
    csv = pd.read_csv(io.StringIO(download_data(at.download_button[0], downloads)))
    assert csv["PPL"].dtype == float and csv["Δ from dense (%)"].dtype == float
    seed = csv[(csv["Method"] == "Wanda 50%") & csv["Source"].str.startswith("Seed report 000")]
    assert seed["PPL"].tolist() == [6.4154]
    published_rows = csv[csv["Origin"] == "Published"]
    assert len(published_rows) and published_rows["Run"].isna().all()


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
    at = run_alone(script)
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
    assert "You have no own runs yet" in at.info[1].value
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert links["Launch a run"] == "launch"  # the first next step links to the Launch page
    assert {"Perplexity", "Zero-shot", "Activation sparsity", "Layer statistics"} <= set(links)


def test_read_only_file_still_shows_results(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.store.db

    monkeypatch.setattr(core.store.db, "_writable", lambda path: False)
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
        at = run_alone("pages/perplexity.py")
        assert not at.exception
        assert at.error and "locked" in at.error[0].value
    finally:
        holder.kill()
        holder.wait()


# -- own runs on the zero-shot and layer-statistics pages ----------------------------------------
def own_run(store: Store, method: str, metrics: list[dict], layer_stats: list[dict] | None = None,
            **spec_fields: object) -> int:
    from core.runs.kinds.prune import PruneSpec

    spec = PruneSpec(method=method, sparsity="0" if method == "dense" else "0.5", **spec_fields)
    run_id = create_run(store, spec, status="done")
    store.add_metrics(run_id, metrics)
    store.add_layer_stats(run_id, layer_stats or [])
    return run_id


def zs(task: str, value: float | None, failed: str = "") -> dict:
    if failed:
        return {"kind": "zero_shot", "dataset": task, "metric": "acc", "value": None,
                "status": "missing", "note": f"task failed: {failed}"}
    return {"kind": "zero_shot", "dataset": task, "metric": "acc", "value": value}


def test_zero_shot_page_with_own_runs(store: Store, downloads: dict[str, bytes]) -> None:
    tasks = {"zero_shot_tasks": ["sb_everyday", "piqa"], "zs_limit": 40}
    own_run(store, "dense", [zs("sb_everyday", 0.8), zs("piqa", None, "ConnectionError")],
            **tasks)
    own_run(store, "dense", [zs("sb_everyday", 0.9)], num_fewshot=1, **tasks)
    wanda = own_run(store, "wanda", [zs("sb_everyday", 0.7), zs("piqa", None, "ConnectionError")],
                    **tasks)
    at = run("pages/zero_shot.py")
    assert_clean(at)
    at.sidebar.radio[0].set_value("Own runs").run()
    assert_clean(at)
    average, per_task, drop = (f.value for f in at.dataframe)
    row = average[average["Run"] == str(wanda)]
    assert row[["Accuracy", "Retention"]].values.tolist() == [["70.00%", "87.50%"]]
    assert per_task.set_index("Task").loc["piqa", "Wanda"] == "failed"
    assert "task failed: ConnectionError" in per_task.set_index("Task").loc["piqa", "Note"]
    shown = drop.set_index(["Task", "Method"])
    assert shown.loc[("sb_everyday", "Wanda 50%"), "Drop (points)"] == "-10.00"
    assert shown.loc[("sb_everyday", "Wanda 50%"), "Relative drop"] == "-12.50%"
    assert len(at.get("plotly_chart")) == 3
    assert len(at.download_button) == 3 * len(at.dataframe)
    for frame in at.dataframe:
        assert not frame.value.astype(str).apply(lambda c: c.str.lower().eq("nan")).any().any()


def test_perplexity_page_shows_a_collapsed_run(store: Store) -> None:
    """Issue 15: a perplexity at or above the vocabulary size reads 'collapsed', not a number."""
    from core.present import runs as run_views

    def wikitext(value: float, **extra: object) -> dict:
        return {"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl", "value": value,
                **extra}

    own_run(store, "dense", [wikitext(20.0)])
    collapsed = own_run(store, "magnitude", [wikitext(
        6960449.0, status="collapsed", note="perplexity 6,960,449 is at or above the "
        "vocabulary size (49,152): worse than uniform guessing")])
    at = run("pages/perplexity.py")
    assert_clean(at)
    at.sidebar.radio[0].set_value("Own runs").run()
    assert_clean(at)
    shown = at.dataframe[0].value
    row = shown[shown["Run"] == str(collapsed)]
    assert row[["Method", "PPL", "Δ from dense"]].values.tolist() == [
        ["Magnitude 50%", "collapsed", "collapsed"]]
    assert "6,960,449" in row["Note"].iloc[0]
    assert not shown.astype(str).apply(lambda c: c.str.contains("6960449")).any().any()
    chart = at.get("plotly_chart")[0].proto.spec
    assert "collapsed (PPL" in chart and "Magnitude: collapsed" in chart
    assert run_views.run_results(store, collapsed).values.tolist() == [
        ["Perplexity on WikiText-2", "collapsed (PPL 6,960,449 ≥ vocabulary size)"]]


def test_layer_statistics_page_shows_own_blocks(store: Store) -> None:
    stats = [{"block": b, "layer": "block", "stat": "sparsity", "value": v}
             for b, v in ((0, 0.49), (1, 0.51))]
    stats += [{"block": None, "layer": "model", "stat": "mean", "value": 0.5},
              {"block": 0, "layer": "model", "stat": "min", "value": 0.49},
              {"block": 1, "layer": "model", "stat": "max", "value": 0.51}]
    run_id = own_run(store, "wanda", [], stats)
    at = run("pages/layers.py")
    assert_clean(at)
    assert str(run_id) in at.selectbox[0].value  # own runs come first
    summary, blocks = (f.value for f in at.dataframe)
    assert summary.set_index("Statistic").loc["Highest block", "Block"] == "1"
    assert blocks["Sparsity"].tolist() == ["49.00%", "51.00%"]
    assert at.get("plotly_chart")
    seed = [o for o in at.selectbox[0].options if "Seed report 002" in o]
    if seed:
        at.selectbox[0].set_value(seed[0]).run()
        assert_clean(at)
        assert len(at.dataframe) == 1 and "only the model summary" in at.info[0].value


def test_pages_import_the_shared_ui_module_as_streamlit_runs_them(store: Store,
                                                                   tmp_path: Path) -> None:
    """``streamlit run app.py`` puts only the app's folder on sys.path: the pages' ``ui`` and
    ``core`` imports must resolve from there (no pytest ``pythonpath``, another working dir)."""
    titles = {"zero_shot": "Zero-shot accuracy", "perplexity": "Perplexity",
              "activation_sparsity": "Activation sparsity", "layers": "Layer statistics"}
    menu = (ROOT / "app.py").read_text()
    titles = {page: title for page, title in titles.items() if f"pages/{page}.py" in menu}
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"root = {str(ROOT)!r}\n"
        "assert root not in sys.path and 'ui' not in sys.modules\n"
        "at = AppTest.from_file(root + '/app.py', default_timeout=60).run()\n"
        f"for page, title in {titles!r}.items():\n"
        "    at.switch_page(f'pages/{page}.py').run()\n"
        "    assert not at.exception, (page, [e.value for e in at.exception])\n"
        "    assert at.title[0].value == title, (page, at.title[0].value)\n"
        "    assert at.dataframe, page\n"
        "assert 'ui.components' in sys.modules\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_result_and_run_pages_never_import_torch(store: Store, tmp_path: Path) -> None:
    """Every page but Launch (whose forms check models) renders without importing torch or
    transformers: a fresh server's first visit pays for what it shows, not for the engine.
    Fails when a page's imports reach the engine (the Runs page did, through the run queue)."""
    for method in ("dense", "magnitude"):
        own_run(store, method, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                                 "value": 20.0 if method == "dense" else 30.0}])
    pages = [p.name for p in sorted((ROOT / "pages").glob("*.py")) if p.name != "launch.py"]
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"root = {str(ROOT)!r}\n"
        "at = AppTest.from_file(root + '/app.py', default_timeout=120).run()\n"
        f"for page in {pages!r}:\n"
        "    at.switch_page(f'pages/{page}').run()\n"
        "    assert not at.exception, (page, [e.value for e in at.exception])\n"
        "    loaded = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "    assert not loaded, (page, loaded)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_calibration_free_methods_are_those_of_the_registry() -> None:
    from core.engine.prune.methods import REGISTRY
    from core.present.labels import CALIBRATION_FREE

    free = {name for name, method in REGISTRY.items() if not method.needs_calibration}
    assert free == CALIBRATION_FREE


# -- page caches keyed on the store's version ----------------------------------------------------
def test_store_version_changes_on_writes_only(store: Store) -> None:
    before = store.version()
    store.runs()
    queries.metric_rows(store)
    store.append_log(1, "a log line goes to the control store")
    assert store.version() == before
    own_run(store, "wanda", [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                              "value": 9.0}])
    assert store.version() != before


def test_a_rerun_with_nothing_changed_reads_nothing(store: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = tables.load_metrics

    def counted(store_: Store, kind: str | None = None) -> pd.DataFrame:
        calls.append(kind)
        return real(store_, kind)

    monkeypatch.setattr(tables, "load_metrics", counted)
    run_id = own_run(store, "wanda", [{"kind": "perplexity", "dataset": "wikitext2",
                                       "metric": "ppl", "value": 7.25}])
    at = run("pages/perplexity.py")
    assert_clean(at)
    first = len(calls)
    assert first >= 1
    at.run()
    assert_clean(at)
    assert len(calls) == first  # the same version of the store: served from the cache
    store.add_metrics(run_id, [{"kind": "perplexity", "dataset": "ptb", "metric": "ppl",
                                "value": 11.5}])
    at.run()
    assert_clean(at)
    assert len(calls) > first  # the store changed: read again, and the new row is shown
    shown = at.dataframe[0].value
    assert "11.50" in shown.astype(str).to_numpy().ravel().tolist()


def test_results_version_moves_with_results_only(store: Store) -> None:
    from core.runs.kinds.prune import PruneSpec

    start = store.results_version()
    queued = create_run(store, PruneSpec(method="wanda", sparsity="0.6"))
    assert store.move(queued, "running")
    assert store.move(queued, "failed", error="boom")
    assert store.results_version() == start  # a queue that moves changes no result
    other = Store(store.path)  # another process's view of the same file
    done = create_run(store, PruneSpec(method="wanda", sparsity="0.7"))
    assert store.move(done, "running") and store.results_version() == start
    assert store.move(done, "done")
    after_done = other.results_version()
    assert after_done != start
    store.add_metrics(done, [{"kind": "perplexity", "dataset": "wikitext2", "metric": "ppl",
                              "value": 8.0}])
    assert store.results_version() != after_done


def test_results_version_keeps_the_last_value_while_the_file_is_held(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.store.db import StoreError

    known = store.results_version()
    store.append_log(1, "x")  # the control store: the results file is unchanged
    with store.transaction() as con:  # the file changes...
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('note', 'x')")

    def held(*_args, **_kwargs):  # ...and another program holds it now
        raise StoreError("held by another program")

    monkeypatch.setattr(Store, "connect", held)
    assert store.results_version() == known
    fresh = Store(store.path.with_name("other.duckdb"))
    with pytest.raises(StoreError):
        fresh.results_version()  # nothing known to fall back on


def test_a_queue_that_moves_does_not_recompute_the_result_pages(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.runs.kinds.prune import PruneSpec

    calls: list[str] = []
    real = tables.load_metrics
    monkeypatch.setattr(tables, "load_metrics",
                        lambda store_, kind=None: calls.append(kind) or real(store_, kind))
    at = run("pages/perplexity.py")
    assert_clean(at)
    first = len(calls)
    queued = create_run(store, PruneSpec(method="magnitude", sparsity="0.6"))
    store.move(queued, "running")
    at.run()
    assert_clean(at)
    assert len(calls) == first
    store.move(queued, "done")
    at.run()
    assert len(calls) > first


def test_layer_run_index_from_sql_equals_the_one_from_every_layer_row(store: Store) -> None:
    blocks = [{"block": b, "layer": "block", "stat": "sparsity", "value": 0.5} for b in range(3)]
    linears = [{"block": 0, "layer": "mlp.up_proj", "stat": "sparsity", "value": 0.5}]
    own_run(store, "wanda", [], blocks + linears)
    own_run(store, "magnitude", [], [{"block": None, "layer": "model", "stat": "mean",
                                      "value": 0.5}])  # a summary only: no blocks
    own_run(store, "sparsegpt", [], blocks[:2])
    from_rows = tables.layer_runs(tables.load_layer_stats(store))
    from_sql = tables.layer_runs(tables.load_layer_runs(store))
    assert len(from_rows) >= 3  # the published runs with layer statistics too
    pd.testing.assert_frame_equal(from_sql, from_rows)
    one = tables.load_layer_stats(store, [int(from_rows["run_id"].iloc[0])])
    assert set(one["run_id"]) == {int(from_rows["run_id"].iloc[0])}
    assert tables.load_layer_stats(store, []).empty


def test_table_downloads_are_written_when_clicked(downloads: dict[str, Any]) -> None:
    """The three files of every table are functions run on click (not written on every rerun),
    and what they write is the whole table, also of a table shown a page at a time."""
    def script() -> None:
        import pandas as pd

        from core.present import tables
        from ui.components import PAGE_ROWS, show_table

        rows = PAGE_ROWS + 1
        show_table(tables.Table(pd.DataFrame({"Run": range(rows), "PPL": [1.5] * rows}),
                                {"Run": "int", "PPL": "ppl"}), "big")
        show_table(tables.Table(pd.DataFrame({"Run": [1], "PPL": [2.0]}),
                                {"Run": "int", "PPL": "ppl"}), "small")

    from ui.components import PAGE_ROWS

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert_clean(at)
    buttons = list(at.download_button)
    assert all(b.proto.deferred_file_id and not b.proto.url for b in buttons)
    big = tables.Table(pd.DataFrame({"Run": range(PAGE_ROWS + 1), "PPL": [1.5] * (PAGE_ROWS + 1)}),
                       {"Run": "int", "PPL": "ppl"}).display()
    assert len(at.dataframe[0].value) == PAGE_ROWS  # the first page is shown ...
    assert download_data(buttons[0], downloads) == export.to_csv(big)  # ... every row exported
    assert download_data(buttons[2], downloads) == export.to_latex(big, ("Run", "PPL"))
    assert export.parse_markdown(download_data(buttons[4], downloads)).values.tolist() == [
        ["1", "2.00"]]
    at.number_input(key="big-rows-page").set_value(2).run()
    assert at.dataframe[0].value["Run"].tolist() == [str(PAGE_ROWS)]
