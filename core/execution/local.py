"""Where queued runs execute.  The queue lives in the store; an executor makes sure something
is draining it.

``LocalExecutor`` starts one ``core.worker`` process per device on this machine.  A cluster
executor (e.g. Ray) would implement the same two methods by starting one worker task per GPU
that runs ``core.worker.execute`` for claimed runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from core import config
from core.execution import jobs, worker
from core.store.db import Store


class Executor(Protocol):
    def ensure_workers(self) -> list[str]:
        """Start workers for devices that have queued runs and none serving; returns them."""

    def workers_alive(self) -> dict[str, bool]:
        """Per device with pending work: whether a worker serves it."""


class LocalExecutor:
    """One background worker process per device, on this machine."""

    def __init__(self, store: Store, idle_exit_s: float | None = None) -> None:
        self.store = store
        self.idle_exit_s = idle_exit_s if idle_exit_s is not None else float(
            os.environ.get("SPARSEBENCH_WORKER_IDLE_S", "60"))

    def pending_devices(self) -> list[str]:
        frame = self.store.frame(
            "SELECT DISTINCT coalesce(json_extract_string(spec, '$.device'), 'cpu') AS device "
            "FROM runs WHERE origin = 'own' AND status IN ('queued', 'running')")
        return sorted(frame["device"].tolist())

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
        log_file = config.cache_dir() / "logs" / f"worker-{device.replace(':', '_')}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "core.execution.worker", "--db", str(Path(self.store.path)),
                 "serve", "--device", device, "--idle-exit", str(self.idle_exit_s)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=config.REPO_ROOT, start_new_session=True,
            )
        worker.starting_path(Path(self.store.path), device).write_text(f"{proc.pid}\n")
        return proc
