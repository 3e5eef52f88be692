"""Benchmark: run-control latency with 1, 4 and 8 workers writing progress at once.

    python bench/queue_bench.py [--workers 1,4,8] [--seconds 8] [--path control|duckdb]

Each worker process does what a worker does, without a model: claim the next queued run
(``jobs.claim_next``), write its progress, heartbeat and a log line every 20 ms for 0.5 s, store
a small result (``record.keep_and_store``), and again.  Meanwhile this process submits new runs
(``jobs.submit``: the identical-run look-up and insert in one transaction) and reads the Runs
page's table (``run_views.runs_table`` plus a log tail) in turns.  Printed: median and 95th
percentile latency of submit, claim and dashboard read, and how many progress writes landed.

``--path duckdb`` writes progress, heartbeats and log lines into the DuckDB results file, as
every run did before the control store (the "before" figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.execution import jobs  # noqa: E402
from core.present import runs as run_views  # noqa: E402
from core.runs.kinds.prune import PruneSpec  # noqa: E402
from core.runs.results import RunResult  # noqa: E402
from core.store import record  # noqa: E402
from core.store.db import Store, StoreError  # noqa: E402

WRITE_EVERY_S = 0.02
RUN_S = 0.5


def spec(model: str, text: str, seed: int) -> PruneSpec:
    return PruneSpec(model=model, method="magnitude", sparsity="0.5", calibration=text,
                     samples=2, seqlen=32, ppl_datasets=[text], ppl_seqlen=32, max_windows=2,
                     seed=seed)


def write_live(store: Store, run_id: int, i: int, path: str) -> None:
    """One progress write, heartbeat and log line of a run in flight."""
    if path == "control":
        store.control.set_progress(run_id, "pruning", i, 100)
        store.control.beat(run_id)
        store.control.log(run_id, f"block {i}")
        return
    with store.transaction() as con:  # the old path: everything through the results file
        con.execute("UPDATE runs SET progress = ?, heartbeat_at = current_timestamp WHERE id = ?",
                    [json.dumps({"stage": "pruning", "done": i, "total": 100}), run_id])
        con.execute("INSERT INTO run_logs (run_id, line) VALUES (?, ?)", [run_id, f"block {i}"])


def fake_worker(db: str, name: str, seconds: float, path: str, out) -> None:
    """Claim, report progress, store; repeat for ``seconds``.  Puts (claims, writes, errors)."""
    store = Store(db)
    claims: list[float] = []
    writes = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            run_id = jobs.claim_next(store, "cpu", name)
        except StoreError:
            errors += 1
            continue
        claims.append(time.perf_counter() - started)
        if run_id is None:
            time.sleep(0.05)
            continue
        end = time.monotonic() + RUN_S
        while time.monotonic() < end:
            try:
                write_live(store, run_id, writes % 100, path)
                writes += 1
            except StoreError:
                errors += 1
            time.sleep(WRITE_EVERY_S)
        metric = {"kind": "perplexity", "dataset": "bench", "metric": "ppl", "value": 1.0}
        record.keep_and_store(store, run_id, RunResult(metrics=[metric]))
    out.put((claims, writes, errors))


def measure(workers: int, seconds: float, path: str, model: str, text: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    store = Store(folder / "results.duckdb").init()
    for seed in range(workers * 4):  # work for every worker from the start
        jobs.submit(store, spec(model, text, seed))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=fake_worker, args=(str(store.path), f"bench-{i}", seconds, path,
                                                   out)) for i in range(workers)]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # the workers' imports
    submits, reads = [], []
    seed = 10_000
    deadline = time.monotonic() + seconds - 2.0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        jobs.submit(store, spec(model, text, seed))
        submits.append(time.perf_counter() - started)
        seed += 1
        started = time.perf_counter()
        table = run_views.runs_table(store)
        run_views.log_tail(store, int(table["Run"].iloc[-1]))
        reads.append(time.perf_counter() - started)
        time.sleep(0.05)
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    claims = [c for r in results for c in r[0]]
    return {"workers": workers, "submit": submits, "claim": claims, "read": reads,
            "writes": sum(r[1] for r in results), "errors": sum(r[2] for r in results)}


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{1000 * statistics.median(ordered):7.1f} / {1000 * p95:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--path", choices=("control", "duckdb"), default="control")
    args = parser.parse_args()
    from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

    assets = Path(tempfile.mkdtemp(prefix="queue-bench-assets-"))
    model = str(tiny_llama_folder(assets / "tiny"))
    text = assets / "sample.txt"
    text.write_text(SAMPLE_TEXT)
    print(f"progress path: {args.path}; {args.seconds:.0f} s per row; latency ms median / p95")
    print(f"{'workers':>7} | {'submit':>17} | {'claim':>17} | {'dashboard read':>17} | "
          f"{'progress writes':>15} | {'lock errors':>11}")
    for workers in (int(w) for w in args.workers.split(",")):
        row = measure(workers, args.seconds, args.path, model, str(text))
        print(f"{workers:>7} | {ms(row['submit']):>17} | {ms(row['claim']):>17} | "
              f"{ms(row['read']):>17} | {row['writes']:>15} | {row['errors']:>11}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
