"""End to end in a real browser: queue a tiny Wanda run on the Launch page, watch it (and its dense
baseline) finish on the Runs page, find it on the Perplexity page and in the CSV download.

Starts ``streamlit run app.py`` on a free port with its own results file and cache, and drives
headless Debian Chromium with Playwright.  The Runs page itself starts the background worker.
Screenshots of every step go to the test's tmp folder; the last ones are copied to
``/tmp/e2e_*.png``.  The server and the worker it started are stopped at the end, pass or fail.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.execution import worker
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL = "a local .txt file…"
WIDTH = 1400


# -- the server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{url}/_stcore/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"streamlit did not serve within {timeout:.0f} s:\n{log.read_text()}")


def stop_worker(db: Path) -> None:
    """Stop the worker the dashboard started for this results file (it outlives the server)."""
    lock = worker.lock_path(db, "cpu")
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "core.execution.worker" in cmdline and str(db) in cmdline:
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[dict[str, object]]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    text = tmp_path / "sample.txt"
    text.write_text(SAMPLE_TEXT)
    model = tiny_llama_folder(tmp_path / "tiny-model", fit_steps=10)
    db = tmp_path / "results.duckdb"
    env = {**os.environ, "SPARSEBENCH_DB": str(db), "SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        wait_until_serving(url, proc, log)
        yield {"url": url, "db": db, "model": str(model), "text": str(text),
               "shots": tmp_path / "shots", "log": log}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stop_worker(db)


# -- driving Streamlit ------------------------------------------------------------------------
def settle(page, timeout: float = 30) -> None:  # noqa: ANN001
    """Wait until the script run triggered by the last input has finished."""
    time.sleep(0.3)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout * 1000)
    time.sleep(0.2)


def type_into(page, label: str, value: str) -> None:  # noqa: ANN001
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    settle(page)


def choose(page, label: str, option: str) -> None:  # noqa: ANN001
    """Pick ``option`` in a selectbox.  A rerun that finishes just after the click re-draws the
    page and closes the list, so open it again until the option shows (at most three tries)."""
    wanted = page.get_by_role("option", name=option, exact=True)
    for _ in range(3):
        page.get_by_label(label, exact=True).click()
        try:
            wanted.wait_for(state="visible", timeout=5000)
            break
        except Exception:  # noqa: BLE001 - the list closed under us; settle and retry
            page.keyboard.press("Escape")
            settle(page)
    wanted.click()
    settle(page)


def screenshot(page, folder: Path, name: str) -> Path:  # noqa: ANN001
    """The whole page (Streamlit scrolls inside its main block, so grow the window to fit)."""
    height = page.evaluate(
        "() => (document.querySelector('[data-testid=\"stMain\"]') || document.body)"
        ".scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": max(900, int(height) + 40)})
    time.sleep(0.4)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def own_runs(db: Path) -> list[tuple[int, str, str]]:
    frame = Store(db).frame("SELECT id, method, status FROM runs WHERE origin = 'own' "
                            "ORDER BY id")
    return [(int(i), m, s) for i, m, s in frame.itertuples(index=False)]


@contextlib.contextmanager
def browser_page(timeout_ms: int, **options: object) -> Iterator[object]:
    """A page of headless Debian Chromium (``WIDTH`` x 900, ``options`` for ``new_page``),
    every wait (actions and ``expect``) up to ``timeout_ms``; the browser is closed afterwards.

    A fresh server's first render of a page pays its imports, which
    takes longer than ``expect``'s own 5 s on a busy 2-core CI machine."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        expect.set_options(timeout=timeout_ms)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900}, **options)
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            expect.set_options(timeout=5_000)
            browser.close()


# -- the test ---------------------------------------------------------------------------------
def test_launch_watch_and_download_a_tiny_run(app: dict[str, object]) -> None:
    """Over 20 s (about 45 s): the main flow as a user clicks it, in Chromium against a real
    server and worker: a refused value, a queued run and its baseline executed to the end, the
    Runs page's progress, the Perplexity page and its CSV download."""
    from playwright.sync_api import expect

    shots: Path = app["shots"]  # type: ignore[assignment]
    db: Path = app["db"]  # type: ignore[assignment]
    taken: list[Path] = []
    with browser_page(30_000, accept_downloads=True) as page:
        try:
            page.goto(str(app["url"]))
            expect(page.get_by_role("heading", name="SparseBench")).to_be_visible()
            expect(page.get_by_test_id("stToolbar")).to_be_attached()
            # users get the viewer's toolbar: no Deploy button (.streamlit/config.toml)
            expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
            expect(page.get_by_test_id("stAppDeployButton")).to_have_count(0)
            sidebar = page.get_by_test_id("stSidebar")

            # Launch: a tiny Wanda run with a local model and local calibration / evaluation text.
            sidebar.get_by_role("link", name="Launch").click()
            expect(page.get_by_role("heading", name="Launch a run")).to_be_visible(timeout=30_000)
            settle(page)
            type_into(page, "Model name or folder", str(app["model"]))
            choose(page, "Method", "Wanda")
            choose(page, "Calibration text", LOCAL)
            type_into(page, "Calibration .txt file", str(app["text"]))
            # A value the field used to refuse silently (keeping 32) is reported, not queued.
            type_into(page, "Samples", "0")
            page.get_by_role("button", name="Queue run").click()
            expect(page.get_by_test_id("stAlertContentError")).to_contain_text(
                "Samples: 0 is not a whole number between 1 and 4096")
            assert own_runs(db) == []
            type_into(page, "Samples", "2")
            type_into(page, "Tokens per sample", "32")
            datasets = page.get_by_test_id("stMultiSelect").filter(has_text="wiki-offline")
            datasets.get_by_role("button", name="Clear all").click()
            settle(page)
            page.get_by_label("Evaluation datasets", exact=True).click()
            page.get_by_role("option", name=LOCAL, exact=True).click()
            page.keyboard.press("Escape")
            settle(page)
            type_into(page, "Evaluation .txt files (comma separated)", str(app["text"]))
            type_into(page, "Window length (tokens)", "32")
            type_into(page, "Max windows (0 = all)", "4")
            type_into(page, "Batch size", "1")
            # no zero-shot: the default quick task would add lm-eval's start-up to both runs
            tasks = page.get_by_test_id("stMultiSelect").filter(has_text="sb_everyday")
            tasks.get_by_role("button", name="Clear all").click()
            settle(page)
            taken.append(screenshot(page, shots, "01-launch-filled"))

            page.get_by_role("button", name="Queue run").click()
            success = page.get_by_test_id("stAlertContentSuccess")
            expect(success).to_contain_text("Queued run")
            expect(success).to_contain_text("Wanda 50% on tiny-model")
            taken.append(screenshot(page, shots, "02-launch-queued"))
            runs = own_runs(db)
            # the run first, then its dense baseline; the worker the Launch page started may
            # have taken it (or both, a tiny model is quick) by the time the message shows
            assert [m for _, m, _ in runs] == ["wanda", "dense"]
            assert {s for _, _, s in runs} <= {"queued", "running", "done"}, runs
            run_id = runs[0][0]

            # Runs: the page starts the worker; watch both runs finish.
            page.get_by_role("link", name="Follow it on the Runs page").click()
            expect(page.get_by_role("heading", name="Run details")).to_be_visible()
            saw_running = False
            deadline = time.monotonic() + 75
            while time.monotonic() < deadline:
                statuses = [s for _, _, s in own_runs(db)]
                if not saw_running and "running" in statuses:
                    with contextlib.suppress(Exception):
                        expect(page.get_by_test_id("stProgress").first).to_be_visible(
                            timeout=3000)
                        taken.append(screenshot(page, shots, "03-runs-running"))
                        saw_running = True
                if statuses == ["done", "done"] or "failed" in statuses:
                    break
                time.sleep(0.5)
            assert [s for _, _, s in own_runs(db)] == ["done", "done"], (
                own_runs(db), Store(db).control.logs(run_id))
            summary = page.get_by_test_id("stMarkdownContainer").filter(has_text="done").first
            expect(summary).to_contain_text("2 done", timeout=15_000)
            expect(page.get_by_role("combobox", name="Run")).to_have_value(
                f"Run {run_id} · Wanda 50% · calibration sample.txt 2×32, seed 0 · tiny-model")
            expect(page.get_by_role("cell", name="Perplexity on sample.txt")).to_be_visible()
            expect(page.get_by_test_id("stCode").first).to_contain_text("done")
            taken.append(screenshot(page, shots, "04-runs-done"))

            # Perplexity: the run is in the table of own runs and in its CSV download.
            sidebar.get_by_role("link", name="Perplexity").click()
            expect(page.get_by_role("heading", name="Perplexity", exact=True)).to_be_visible()
            sidebar.get_by_text("Own runs", exact=True).click()
            settle(page)
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
            taken.append(screenshot(page, shots, "05-perplexity"))
            with page.expect_download() as download_info:
                page.get_by_test_id("stDownloadButton").filter(has_text="CSV").first.click()
            download = download_info.value
            assert download.suggested_filename == "perplexity.csv"
            saved = shots / "perplexity.csv"
            download.save_as(saved)
        except Exception:
            with contextlib.suppress(Exception):
                taken.append(screenshot(page, shots, "99-failure"))
            raise
        finally:
            for path in taken:
                shutil.copy(path, Path("/tmp") / f"e2e_{path.name}")

    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    mine = [r for r in rows if r["Run"] == str(run_id)]
    assert len(mine) == 1, rows
    # its label names the calibration that differs from the default (a local file, 2 x 32)
    assert mine[0]["Method"] == "Wanda 50% · calibration sample.txt 2×32, seed 0"
    assert mine[0]["Origin"] == "Own run"
    assert float(mine[0]["PPL"]) > 1
    float(mine[0]["Δ from dense (%)"])  # a number: compared with its own dense baseline
    dense = [r for r in rows if r["Method"].startswith("Dense")]
    assert len(dense) == 1 and dense[0]["Δ from dense (%) note"] == "baseline"
    assert {r["Origin"] for r in rows} == {"Own run"}


def test_a_page_url_opened_first_shows_the_app_menu(app: dict[str, object]) -> None:
    """On a fresh server, opening /zero_shot first must still show app.py's menu and layout
    (Streamlit would otherwise run the page alone in its legacy pages/ mode)."""
    from playwright.sync_api import expect

    with browser_page(60_000) as page:
        page.goto(f"{app['url']}/zero_shot")
        expect(page.get_by_role("heading", name="Zero-shot accuracy")).to_be_visible()
        settle(page, 60)
        expect(page.get_by_text("Page not found")).to_have_count(0)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_role("link", name="Zero-shot")).to_be_visible()
        expect(sidebar.get_by_role("link", name="Layer statistics")).to_be_visible()
        expect(sidebar.get_by_text("Results file:")).to_be_visible()  # app.py ran
        screenshot(page, app["shots"], "direct-url")  # type: ignore[arg-type]


def test_a_run_link_opens_that_runs_details(app: dict[str, object]) -> None:
    """/runs?run=<id> opens that run's details (not the newest), its name shown literally;
    picking another run writes it into the URL."""
    import re

    from playwright.sync_api import expect

    from core.store.meta import check

    store = Store(app["db"]).init()  # type: ignore[arg-type]
    ids = [store.create_run(kind="prune", model=str(app["model"]), method="wanda",
                            sparsity=0.5, spec={"model": str(app["model"]), "seed": seed},
                            status="done", meta=check(name, None, ["e2e"]))
           for seed, name in enumerate(("<b>first</b>", "**second**"))]
    # a newer run that is running: the details' own default, which the link must beat
    busy = store.create_run(kind="prune", model=str(app["model"]), method="wanda",
                            sparsity=0.6, spec={"model": str(app["model"]), "seed": 9},
                            status="running")
    store.control.beat(busy, "elsewhere")
    with browser_page(30_000) as page:
        page.goto(f"{app['url']}/runs?run={ids[0]}")
        picker = page.get_by_role("combobox", name="Run")
        expect(picker).to_have_value(f"Run {ids[0]} · <b>first</b> · Wanda 50% · tiny-model")
        expect(page.get_by_test_id("stText").first).to_have_text("Name: <b>first</b>")
        expect(page.locator("b", has_text="first")).to_have_count(0)  # not HTML
        settle(page)
        choose(page, "Run", f"Run {ids[1]} · **second** · Wanda 50% · tiny-model")
        expect(page).to_have_url(re.compile(rf"/runs\?run={ids[1]}$"))
        expect(page.get_by_test_id("stText").first).to_have_text("Name: **second**")
        time.sleep(2.5)  # a refresh (every 2 s) keeps the pick and the URL
        expect(picker).to_have_value(f"Run {ids[1]} · **second** · Wanda 50% · tiny-model")
        expect(page).to_have_url(re.compile(rf"/runs\?run={ids[1]}$"))
        screenshot(page, app["shots"], "run-link")  # type: ignore[arg-type]


def _stored_runs(app: dict[str, object], perplexities: list[float]) -> list[int]:
    """Done Wanda runs (sparsity 0.3, 0.4, ...) with these WikiText-2 perplexities."""
    store = Store(app["db"]).init()  # type: ignore[arg-type]
    ids = []
    for n, value in enumerate(perplexities):
        run_id = store.create_run(kind="prune", model=str(app["model"]), method="wanda",
                                  sparsity=0.3 + n / 10, status="done",
                                  spec={"model": str(app["model"]), "seed": n})
        store.add_metrics(run_id, [{"kind": "perplexity", "dataset": "wikitext2",
                                    "metric": "ppl", "value": value, "status": "ok"}])
        ids.append(run_id)
    return ids


def tick_rows(page, rows: list[int]) -> None:  # noqa: ANN001
    """Tick rows of the page's first dataframe (its row-marker column; rows from 0)."""
    canvas = page.get_by_test_id("stDataFrameResizable").first
    canvas.scroll_into_view_if_needed()
    for row in rows:
        canvas.click(position={"x": 16, "y": ROW_HEIGHT * (row + 1) + ROW_HEIGHT // 2})
        settle(page)


ROW_HEIGHT = 35  # a dataframe row (and its header), in pixels


def test_sort_tick_and_compare_runs_from_the_list(app: dict[str, object]) -> None:
    """Sorting by a perplexity column orders the whole list and lands in the URL; ticking two
    rows and pressing Compare opens them side by side, named in the Compare page's URL."""
    import re

    from playwright.sync_api import expect

    ids = _stored_runs(app, [14.0, 11.0, 19.0, 12.5])
    by_ppl = [ids[1], ids[3], ids[0], ids[2]]
    with browser_page(30_000) as page:
        page.goto(f"{app['url']}/runs")
        settle(page)
        choose(page, "Sort by", "PPL WT2 (lowest first)")
        expect(page).to_have_url(re.compile(r"/runs\?sort=PPL\+WT2"))
        tick_rows(page, [0, 1])
        ticked = page.get_by_test_id("stMarkdownContainer").filter(has_text="Ticked:")
        expect(ticked).to_have_text(f"Ticked: run {by_ppl[0]}, run {by_ppl[1]}")
        screenshot(page, app["shots"], "runs-ticked")  # type: ignore[arg-type]
        page.get_by_test_id("stMain").get_by_role("link", name="Compare").click()
        expect(page).to_have_url(re.compile(
            rf"/compare\?runs={by_ppl[0]}&runs={by_ppl[1]}$"))
        expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
        settle(page)
        screenshot(page, app["shots"], "compare-from-list")  # type: ignore[arg-type]
        picked = page.get_by_test_id("stMultiSelect")
        expect(picked).to_contain_text(f"#{by_ppl[0]} · tiny-model · Wanda 40% · own run")
        expect(picked).to_contain_text(f"#{by_ppl[1]} · tiny-model · Wanda 60% · own run")

        page.goto(f"{app['url']}/runs?sort=PPL+WT2&method=wanda")  # a shared view
        settle(page)
        expect(page.get_by_role("combobox", name="Sort by")).to_have_value(
            "PPL WT2 (lowest first)")
        expect(page.get_by_text("Page 1 of 1: 4 of 4 matching runs shown.")).to_be_visible()
        tick_rows(page, [0])  # archive the best: it leaves the list (and the result pages)
        page.get_by_role("button", name="Archive", exact=True).first.click()
        settle(page)
        expect(page.get_by_text(
            "Page 1 of 1: 3 of 3 matching runs shown. 1 archived run(s) hidden.")).to_be_visible()
        assert Store(app["db"]).frame(  # type: ignore[arg-type]
            "SELECT id FROM runs WHERE archived_at IS NOT NULL")["id"].tolist() == [by_ppl[0]]
        expect(page.get_by_text(  # the rows changed: nothing stays ticked
            "Tick runs in the list to compare them, run them again or archive them.",
            exact=True)).to_be_visible()
        screenshot(page, app["shots"], "runs-archived")  # type: ignore[arg-type]


def test_a_tables_run_link_opens_the_runs_details(app: dict[str, object]) -> None:
    """The Perplexity table's "Run details" cell of an own run opens /runs?run=<id>."""
    import re

    from playwright.sync_api import expect

    ids = _stored_runs(app, [14.0, 11.0])
    with browser_page(30_000) as page:
        page.goto(f"{app['url']}/perplexity")
        expect(page.get_by_role("button", name="CSV").first).to_be_visible(timeout=60_000)
        settle(page)
        screenshot(page, app["shots"], "perplexity-links")  # type: ignore[arg-type]
        table = page.get_by_test_id("stDataFrameResizable").first
        link = {"x": 24, "y": ROW_HEIGHT + ROW_HEIGHT // 2}  # own runs come first
        table.hover(position=link)
        time.sleep(0.5)
        with page.context.expect_page() as opened:
            table.click(position=link)
        details = opened.value
        expect(details).to_have_url(re.compile(rf"/runs\?run={ids[0]}$"))
        expect(details.get_by_role("combobox", name="Run")).to_have_value(
            re.compile(rf"^Run {ids[0]} · Wanda 30%"))


def test_a_running_run_shows_its_time_left(app: dict[str, object]) -> None:
    """A run 6 blocks of 30 into pruning (as its worker reports it, heartbeat fresh) shows the
    estimated time left and its rate, in the list's bar and in its details."""
    import re
    from datetime import datetime

    from playwright.sync_api import expect

    from tests.test_launch_pages import live_payload

    store = Store(app["db"]).init()  # type: ignore[arg-type]
    run_id = store.create_run(kind="prune", model=str(app["model"]), method="wanda",
                              sparsity=0.5, spec={"model": str(app["model"])}, status="running")
    store.update_run(run_id, started_at=datetime.now())
    store.control.beat(run_id, "e2e-worker")
    payload = live_payload(6)
    store.control.set_progress(run_id, "pruning", 6, 30, {k: v for k, v in payload.items()
                                                          if k not in ("stage", "done", "total")})
    estimate = re.compile(r"pruning: block 6 of 30 · ≈ (1 min \d\d s|\d\d? s) left · "
                          r"0\.5 blocks/s")
    with browser_page(30_000) as page:
        page.goto(f"{app['url']}/runs")
        expect(page.get_by_text(estimate)).to_have_count(2)  # the list's bar and the details'
        screenshot(page, app["shots"], "runs-estimate")  # type: ignore[arg-type]
