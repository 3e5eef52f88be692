"""The executor seam: where queued runs execute, chosen by configuration.

``executor_for(store)`` is the one factory the pages and the command line use:

* ``SPARSEBENCH_EXECUTOR=local`` (the default): ``LocalExecutor``, one background worker process
  per device on this machine, one run at a time per device.
* ``SPARSEBENCH_EXECUTOR=ray``: ``RayExecutor``, each run a Ray task with its resource request,
  on the cluster at ``SPARSEBENCH_RAY_ADDRESS`` (``HEAD:6379``; unset: a local Ray instance).

Whatever the executor, the queue and the results live in the one DuckDB file of this machine,
and only processes of this machine write it.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from core.config import EXECUTORS, executor_name
from core.store.db import Store

__all__ = ["EXECUTORS", "Executor", "executor_for", "executor_name"]



@runtime_checkable
class Executor(Protocol):
    """What the pages and the command line need from wherever runs execute."""

    def submit(self, run_id: int) -> None:
        """Make sure the queued run ``run_id`` will be executed (start what drains the queue)."""

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run at once, ask a running one to stop; the status after the request."""

    def poll(self) -> dict[str, Any]:
        """Fail runs whose worker died; what is running where (``running``: run id -> worker)."""

    def ensure_workers(self) -> list[str]:
        """Fail dead runs and start what drains the queue when runs are pending (the pages
        call this on every refresh); returns what was started."""


def executor_for(store: Store) -> Executor:
    """The executor chosen by ``SPARSEBENCH_EXECUTOR`` (and ``SPARSEBENCH_RAY_ADDRESS``)."""
    name = executor_name()
    if name == "ray":
        from core.execution.ray import RayExecutor

        return RayExecutor(store, address=os.environ.get("SPARSEBENCH_RAY_ADDRESS") or None)
    from core.execution.local import LocalExecutor

    return LocalExecutor(store)
