"""Functions run in spawned processes by the store and worker tests (light imports only)."""

from __future__ import annotations

import time

import duckdb

from core.store.db import Store


def hold_lock(path: str, seconds: float, ready) -> None:
    """Hold a write connection (and so the file lock) for ``seconds``."""
    con = duckdb.connect(path)
    con.execute("INSERT INTO meta VALUES ('holder', 'x')")
    ready.set()
    time.sleep(seconds)
    con.close()


def hold_lock_on_signal(path: str, seconds: float, go, ready) -> None:
    """Wait (imports done) for ``go``, then hold the file lock for ``seconds``."""
    go.wait()
    hold_lock(path, seconds, ready)


def keep_writing(path: str, seconds: float, tag: int = 1, at_least: int = 0) -> None:
    """Write progress and log lines as fast as possible, as a worker does (for a new run of
    its own, told apart by ``tag``), for ``seconds`` and at least ``at_least`` lines (a loaded
    machine may give a process few turns in that time)."""
    store = Store(path)
    run_id = store.create_run(kind="prune", model="m", method="wanda", spec={"n": tag})
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or i < at_least:
        store.append_log(run_id, f"line {i}")
        store.control.set_progress(run_id, "pruning", i, 1_000_000)
        i += 1


def submit_many(path: str, spec_values: dict, times: int, start, out) -> None:
    """Submit the same spec ``times`` times as fast as possible once ``start`` is set; put the
    run ids answered on ``out``."""
    from core.execution import jobs
    from core.runs.kinds.prune import PruneSpec

    store = Store(path)
    spec = PruneSpec(**spec_values)
    start.wait()
    out.put([jobs.submit(store, spec).run_id for _ in range(times)])
