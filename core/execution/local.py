"""The local executor: queued runs execute on this machine.  The queue lives in the store; the
executor makes sure something is draining it.

``LocalExecutor`` starts one ``core.execution.worker`` process per device slot of this machine
(``core.engine.devices``: one per GPU, each seeing only its GPU, and one for the CPU), so a
sweep of ``auto`` runs on 8 GPUs runs 8 at a time; a run pinned to ``cuda:N`` waits for GPU N.
It implements ``core.execution.executors.Executor``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core import config
from core.engine import devices
from core.execution import jobs, worker
from core.store import queries
from core.store.db import Store


class LocalExecutor:
    """One background worker process per device, on this machine."""

    def __init__(self, store: Store, idle_exit_s: float | None = None) -> None:
        """Workers exit after ``idle_exit_s`` idle seconds (``SPARSEBENCH_WORKER_IDLE_S``)."""
        self.store = store
        self.idle_exit_s = idle_exit_s if idle_exit_s is not None else float(
            os.environ.get("SPARSEBENCH_WORKER_IDLE_S", "60"))

    # -- the Executor protocol ----------------------------------------------------------------
    def submit(self, run_id: int) -> None:
        """Make sure a worker serves the device of run ``run_id`` (the same start as the pages'
        ``ensure_workers``: one worker per device with pending runs)."""
        frame = self.store.frame("SELECT status FROM runs WHERE id = ?", [run_id])
        if frame.empty:
            raise ValueError(f"no run {run_id}")
        if frame.iloc[0, 0] in jobs.ACTIVE:
            self.ensure_workers()

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run at once; the worker stops a running one (the status now)."""
        return jobs.request_cancel(self.store, run_id)

    def poll(self) -> dict[str, Any]:
        """Fail runs without a heartbeat; the workers per device and what runs where."""
        failed = jobs.recover_stale(self.store)
        return {"executor": "local", "failed": failed, "workers": self.workers_alive(),
                "running": jobs.running_where(self.store)}

    # -- workers ------------------------------------------------------------------------------
    def pending_devices(self) -> list[str]:
        """Slots with queued or running own runs (an ``auto`` run: every GPU's slot)."""
        frame = self.store.frame(
            f"SELECT DISTINCT {queries.DEVICE_SQL} AS device FROM runs "
            "WHERE origin = 'own' AND status IN ('queued', 'running')")
        slots = {slot for device in frame["device"] for slot in devices.slots_for(device)}
        return sorted(slots)

    def workers_alive(self) -> dict[str, bool]:
        """Per device with pending work: whether a worker serves it or is starting up."""
        path = Path(self.store.path)
        return {d: worker.worker_alive(path, d) or worker.worker_starting(path, d)
                for d in self.pending_devices()}

    def ensure_workers(self) -> list[str]:
        """Fail runs whose worker died, then start a worker for each unserved device."""
        jobs.recover_stale(self.store)
        started = []
        for device, alive in self.workers_alive().items():
            if not alive:
                self.start(device)
                started.append(device)
        return started

    def start(self, device: str) -> subprocess.Popen:
        """Start a background worker for the slot ``device`` (it exits when idle), seeing only
        that slot's GPU."""
        log_file = config.log_dir(self.store.path) / f"worker-{device.replace(':', '_')}.log"
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "core.execution.worker", "--db", str(Path(self.store.path)),
                 "serve", "--device", device, "--idle-exit", str(self.idle_exit_s)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=config.REPO_ROOT, start_new_session=True,
                env=devices.worker_environment(device),
            )
        worker.starting_path(Path(self.store.path), device).write_text(f"{proc.pid}\n")
        return proc
