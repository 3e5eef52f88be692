"""What runs inside the Ray cluster: one run as a Ray task, and the channel it reports through.

Nothing here opens the results file (a task may run on another machine): the task rebuilds the
spec from its stored values, checks it on the machine that executes it, runs it and returns its
``RunResult``; progress and log lines go to a ``Channel`` actor that the dispatcher
(``core.execution.ray``, the one writer of the file) drains.  This module imports nothing heavy at
import time, so the channel actor starts quickly.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

#: At most one progress message per run this often (the last step of a stage always goes).
PROGRESS_EVERY_S = 0.5

#: A message on the channel: (run id, attempt, kind, payload); kind is 'started', 'progress' or
#: 'say'; the attempt tells a task from a lost predecessor of the same run.
Message = tuple[int, int, str, Any]


class Channel:
    """Messages from the run tasks to the dispatcher, in the order each task sent them."""

    def __init__(self) -> None:
        """An empty channel."""
        self.items: list[Message] = []

    def put(self, item: Message) -> None:
        """Keep one message until the next ``drain``."""
        self.items.append(item)

    def drain(self) -> list[Message]:
        """Every message since the last call, oldest first."""
        items, self.items = self.items, []
        return items


class Reporter:
    """The progress and log functions a run gets, sending to the channel (fire and forget)."""

    def __init__(self, run_id: int, attempt: int, channel: Any) -> None:
        """Report for attempt ``attempt`` of run ``run_id`` to ``channel`` (a ``Channel``
        actor handle)."""
        self.run_id = run_id
        self.attempt = attempt
        self.channel = channel
        self.last_ref: Any = None
        self.progress: Any = self.tracking([])

    def send(self, kind: str, payload: Any) -> None:
        """One message; the channel receives a task's messages in the order they were sent."""
        self.last_ref = self.channel.put.remote((self.run_id, self.attempt, kind, payload))

    def tracking(self, plan: list[Any]) -> Any:
        """The run's progress function for a stage plan: every report tracked (overall fraction,
        timings), at most one sent every ``PROGRESS_EVERY_S`` (a new stage and each stage's
        end always go)."""
        from core.runs.progress import Tracker, throttled

        return throttled(Tracker(plan), lambda *report: self.send("progress", report),
                         PROGRESS_EVERY_S)

    def say(self, line: str) -> None:
        """One line of the run's log."""
        self.send("say", line)

    def flush(self) -> None:
        """Wait until the channel holds every message sent so far (before returning a result)."""
        if self.last_ref is not None:
            ray.get(self.last_ref)


def on_assigned_device(spec: Any) -> Any:
    """A CUDA run executes on the GPU Ray assigned to the task, which its process sees as
    ``cuda`` (CUDA_VISIBLE_DEVICES names only that one); ``auto`` there too when Ray gave the
    task a GPU, else on the CPU; other devices are left as they are."""
    device = str(spec.device)
    if device.startswith("cuda") or (device == "auto" and ray.get_gpu_ids()):
        return spec.model_copy(update={"device": "cuda"})
    if device == "auto":
        return spec.model_copy(update={"device": "cpu"})
    return spec


def where() -> dict[str, Any]:
    """This worker process: host name, node address and id, pid, the GPUs Ray assigned it, where
    its ``core`` package was imported from (the runtime environment's copy) and which
    SparseBench settings it has."""
    try:
        node = ray.util.get_node_ip_address()
    except Exception:  # only a label
        node = "?"
    import core

    return {"host": socket.gethostname(), "node": node, "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "code": os.path.dirname(core.__file__),
            "settings": sorted(k for k in os.environ if k.startswith("SPARSEBENCH_"))}


def execute_run(run_id: int, attempt: int, spec_values: dict[str, Any], channel: Any) -> Any:
    """The Ray task of one run: rebuild and check the spec here, execute it, return the
    ``RunResult``.  A spec refused on this machine raises ``ValueError`` with the problems, as
    the local worker does."""
    from core.engine import environment
    from core.runs import registry

    reporter = Reporter(run_id, attempt, channel)
    try:
        spec = on_assigned_device(registry.spec_from_dict(spec_values))
        reporter.progress = reporter.tracking(registry.stage_plan(spec))
        reporter.send("started", {**where(), "device": spec.device,
                                  "environment": environment.describe(spec.device)})
        return registry.execute(spec, reporter.progress, reporter.say)
    finally:
        reporter.flush()
