"""The Ray executor: queued runs execute as Ray tasks on a cluster of (GPU) machines.

    python -m core.execution.ray --db DB serve      # the dispatcher; RayExecutor starts it

The results file keeps one writer on this machine: the dispatcher, the Ray driver.  It claims
queued runs (as many as the cluster's CPUs and GPUs take: one GPU per CUDA run, one CPU per CPU
run), submits each as a Ray task (``core.execution.ray_task.execute_run``), writes the progress
and log lines the tasks send through a channel actor, writes the heartbeats of its runs, stores
each ``RunResult`` when it comes back, and stops a run whose cancel was requested with
``ray.cancel(force=True)``.  A Ray worker killed or crashed mid-run fails its run with a clear
error.  The tasks never open the results file.

``SPARSEBENCH_RAY_ADDRESS`` (``HEAD:6379``) names a cluster started with ``ray start --head``;
without it the dispatcher starts a local Ray instance.  An exclusive lock file makes at most one
dispatcher serve a results file; a new one fails the runs a dead one left running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core import config
from core.execution import cluster, jobs, worker
from core.store import queries, record
from core.store.db import Store, StoreError

log = logging.getLogger("sparsebench.ray")

#: The dispatcher's lock, as ``worker.device_lock(db, LOCK)``: one dispatcher per results file.
LOCK = "ray"
HEARTBEAT_S = worker.HEARTBEAT_S
POLL_S = 0.5
#: The ``worker`` column of a run the dispatcher holds starts with this.
WORKER_PREFIX = "ray"
CANCELLED = "cancelled by the user; no results were stored"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colours in Ray's error texts
DEAD_DISPATCHER = "the Ray dispatcher running it stopped (killed or crashed)"
#: A run queued again after its node or dispatcher was lost: its log line starts so.
REQUEUED = "queued again"
SUMMARY_EVERY_S = 10.0


def connect(address: str | None = None, **local: Any) -> str:
    """Join the Ray cluster at ``address`` (default ``SPARSEBENCH_RAY_ADDRESS``), or start a
    local Ray instance with the ``ray.init`` options ``local`` (e.g. ``num_cpus=2``) when there
    is no address.  Returns what was joined, in words."""
    import ray

    address = address or os.environ.get("SPARSEBENCH_RAY_ADDRESS") or None
    if not ray.is_initialized():
        options: dict[str, Any] = {"namespace": "sparsebench", "log_to_driver": False,
                                   "runtime_env": cluster.runtime_environment()}
        if address is None:  # 'local': a new private instance, never someone else's cluster
            context = ray.init(address="local",
                               **{"include_dashboard": False, **options, **local})
        else:
            context = ray.init(address=address, **options)
        JOINED.update(address=address, dashboard=getattr(context, "dashboard_url", None) or None)
    return f"the Ray cluster at {address}" if address else "a local Ray instance"


#: What ``connect`` joined: the cluster's address (None: a local instance) and its dashboard.
JOINED: dict[str, str | None] = {"address": None, "dashboard": None}


def max_retries() -> int:
    """How often a run whose node left the cluster, or whose dispatcher died, is queued again
    (``SPARSEBENCH_RAY_RETRIES``, default 1)."""
    value = os.environ.get("SPARSEBENCH_RAY_RETRIES", "1").strip()
    if not value.isdigit():
        raise ValueError(f"SPARSEBENCH_RAY_RETRIES={value!r} is not a whole number")
    return int(value)


def write_summary(db: Path) -> dict[str, Any]:
    """Write what the joined cluster offers beside the results file; returns it."""
    import ray

    summary = cluster.summarize(ray.nodes(), JOINED["address"], JOINED["dashboard"])
    cluster.write_summary(db, summary)
    return summary


@dataclass
class InFlight:
    """A claimed run and its Ray task."""

    run_id: int
    ref: Any  # the task's ObjectRef
    gpu: bool
    attempt: int  # tells this task's messages from those of a lost predecessor
    where: str = ""  # "host (node) pid N" once the task reported it started
    node_id: str = ""  # the Ray node it runs on, once reported


class Dispatcher:
    """The Ray driver that drains the queue of one results file (call ``step`` in a loop).
    Ray must be connected (``connect``) before it is made."""

    def __init__(self, store: Store, name: str | None = None) -> None:
        """Create the channel actor (on this machine) and the remote task of a run."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from core.execution import ray_task

        self.store = store
        self.name = name or f"{WORKER_PREFIX}-dispatcher {socket.gethostname()}:{os.getpid()}"
        # The channel lives on this (the driver's) machine: it goes only when the driver goes.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.channel = ray.remote(ray_task.Channel).options(
            num_cpus=0, scheduling_strategy=here).remote()
        self.task = ray.remote(ray_task.execute_run)
        self.inflight: dict[int, InFlight] = {}
        self.noted: set[int] = set()  # queued runs told that the cluster has no GPU
        self.last_beat = 0.0
        self.attempts = 0
        self.summary = write_summary(Path(store.path))
        self.summary_at = time.monotonic()

    def step(self) -> bool:
        """One round: results, messages, cancels, heartbeats, new claims.  Whether runs are in
        flight afterwards."""
        ready = self._ready()
        self._drain()  # after the wait: a finished task's last messages are in the channel
        for run_id in ready:
            self._finish(run_id)
        self._cancel_requested()
        self._beat()
        self._refresh_summary()
        if self.store.control.held():  # results that waited for the results file
            record.flush_held(self.store)
        self._claim()
        return bool(self.inflight)

    def recover(self) -> list[int]:
        """Queue again (or fail, retries spent) the runs a dead dispatcher left running (this
        one holds the lock): their tasks died with it."""
        frame = self.store.frame(
            "SELECT id FROM runs WHERE status = 'running' AND origin = 'own' AND worker LIKE ?",
            [f"{WORKER_PREFIX}%"])
        ids = [int(i) for i in frame["id"]]
        for run_id in ids:
            self._retry_or_fail(run_id, DEAD_DISPATCHER)
        return ids

    def stop(self, reason: str) -> None:
        """Cancel every task in flight and queue its run again (or fail it with ``reason``,
        retries spent): the next dispatcher runs it."""
        import ray

        for run_id, flight in list(self.inflight.items()):
            with contextlib.suppress(Exception):
                ray.cancel(flight.ref, force=True)
            with contextlib.suppress(StoreError):
                self._retry_or_fail(run_id, reason)
            del self.inflight[run_id]

    def _retry_or_fail(self, run_id: int, why: str) -> str:
        """Queue a run whose task was lost (not its own fault) again, at most ``max_retries``
        times (said in its log), else fail it; the status it got."""
        logs = [line for *_, line in self.store.control.logs(run_id)]
        done = sum(line.startswith(REQUEUED) for line in logs)
        if done < max_retries() and self.store.move(run_id, "queued", worker=None,
                                                    started_at=None):
            self.store.control.forget(run_id)
            self.store.append_log(run_id, f"{REQUEUED} (retry {done + 1} of {max_retries()}): "
                                          f"{why}")
            return "queued"
        self._fail(run_id, f"{why}; results were not stored"
                           + (f" (after {done} retr{'y' if done == 1 else 'ies'})" if done else ""))
        return "failed"

    def _refresh_summary(self) -> None:
        """Every ``SUMMARY_EVERY_S``: what the cluster offers, for the pages and the checks."""
        if time.monotonic() - self.summary_at >= SUMMARY_EVERY_S:
            self.summary = write_summary(Path(self.store.path))
            self.summary_at = time.monotonic()

    # -- results --------------------------------------------------------------------------------
    def _ready(self) -> list[int]:
        """The runs whose task has finished (result or error)."""
        import ray

        refs = {flight.ref: run_id for run_id, flight in self.inflight.items()}
        if not refs:
            return []
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        return [refs[ref] for ref in done]

    def _finish(self, run_id: int) -> None:
        """Store a finished task's result (done), or fail the run with what went wrong."""
        import ray

        flight = self.inflight[run_id]
        try:
            result = ray.get(flight.ref)
        except ray.exceptions.RayError as exc:
            lost = self._node_lost(exc, flight)
            if lost:
                with contextlib.suppress(StoreError):
                    log.info("run %s: %s", run_id, lost)
                    self._retry_or_fail(run_id, lost)
                    del self.inflight[run_id]
                return
            message = failure_message(exc, flight.where)
            # The run's own exception: its remote traceback (in the text of the error).
            trace = (ANSI.sub("", str(exc)).strip().splitlines()[-12:]
                     if isinstance(exc, ray.exceptions.RayTaskError) else [])
            try:
                if trace:
                    self.store.append_log(run_id, "\n".join(trace))
                self._fail(run_id, message)
            except StoreError as err:  # the next step retries
                log.warning("run %s: could not record its failure: %s", run_id, err)
                return
            log.info("run %s failed: %s", run_id, message)
        else:
            try:
                record.keep_and_store(self.store, run_id, result)
                self.store.append_log(run_id, "done")
            except record.RunNotActive as exc:  # cancelled or failed meanwhile: leave it
                log.info("%s", exc)
            except StoreError as exc:  # held on disk: a later step's flush_held stores it
                log.warning("run %s: its result waits for the results file: %s", run_id, exc)
        del self.inflight[run_id]

    def _node_lost(self, exc: Exception, flight: InFlight) -> str:
        """Why the run's node is gone ('' when it is not: the run's own failure, or its worker
        process alone died)."""
        import ray
        from ray import exceptions as rx

        node = flight.node_id
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        gone = (isinstance(exc, (rx.NodeDiedError, rx.LocalRayletDiedError))
                or (isinstance(exc, rx.WorkerCrashedError) and node and node not in alive))
        if not gone:
            return ""
        return (f"the machine running it ({flight.where or 'node ' + (node[:12] or '?')}) left "
                "the Ray cluster")

    def _fail(self, run_id: int, message: str) -> None:
        """Move a run to failed with ``message`` (in its error and its log)."""
        if self.store.move(run_id, "failed", finished_at=datetime.now(), error=message):
            self.store.append_log(run_id, f"failed: {message}")
            self.store.control.forget(run_id)

    # -- messages from the tasks ----------------------------------------------------------------
    def _drain(self) -> None:
        """Write the progress (the latest per run), log lines and start reports of the tasks."""
        import ray

        latest: dict[int, tuple[Any, ...]] = {}
        for run_id, attempt, kind, payload in ray.get(self.channel.drain.remote(), timeout=60):
            flight = self.inflight.get(run_id)
            if flight is None or flight.attempt != attempt:  # ended, or a lost predecessor
                continue
            try:
                if kind == "progress":
                    latest[run_id] = tuple(payload)
                elif kind == "say":
                    self.store.append_log(run_id, str(payload))
                elif kind == "started":
                    self._started(run_id, payload)
            except StoreError as exc:
                log.warning("run %s: a %s message was lost: %s", run_id, kind, exc)
        for run_id, report in latest.items():  # (stage, done, total[, payload])
            with contextlib.suppress(StoreError):
                self.store.control.set_progress(run_id, *report)

    def _started(self, run_id: int, info: dict[str, Any]) -> None:
        """The task began on a Ray worker: note where (the ``worker`` column), when and the
        executing machine's environment."""
        flight = self.inflight[run_id]
        flight.node_id = str(info.get("node_id") or "")
        flight.where = (f"{info['host']} ({info['node']}, node {flight.node_id[:12]}) "
                        f"pid {info['pid']}")
        where = f"{WORKER_PREFIX} {info['node']} pid {info['pid']}"
        self.store.control.beat(run_id, where)
        self.store.update_run(run_id, worker=where, started_at=datetime.now(),
                              environment=info.get("environment"))
        gpus = f", GPU {', '.join(info['gpus'])}" if info.get("gpus") else ""
        self.store.append_log(run_id, f"started on {flight.where}, device {info['device']}"
                                      f"{gpus}; code from {info.get('code')}; settings "
                                      f"{', '.join(info.get('settings') or []) or 'none'}")

    # -- cancels and heartbeats -----------------------------------------------------------------
    def _cancel_requested(self) -> None:
        """Stop the tasks of runs whose cancel was requested (-> cancelled) or that are no
        longer running (failed by a heartbeat check, or gone)."""
        import ray

        if not self.inflight:
            return
        ids = list(self.inflight)
        frame = self.store.frame(
            f"SELECT id, status FROM runs WHERE id IN ({', '.join('?' for _ in ids)})", ids)
        live = self.store.control.live(ids)
        rows = {int(r.id): (r.status, live.get(int(r.id), {}).get("cancel_requested", False))
                for r in frame.itertuples()}
        for run_id in ids:
            status, cancel = rows.get(run_id, ("gone", False))
            if status == "running" and not cancel:
                continue
            ray.cancel(self.inflight.pop(run_id).ref, force=True)
            if status == "running" and self.store.move(
                    run_id, "cancelled", finished_at=datetime.now(), error=CANCELLED):
                self.store.append_log(run_id, CANCELLED)
                self.store.control.forget(run_id)
            log.info("run %s: task cancelled (%s)", run_id,
                     "on request" if status == "running" else f"run is {status}")

    def _beat(self) -> None:
        """Every ``HEARTBEAT_S``: the heartbeat of each run in flight (the pages' staleness
        check fails runs whose dispatcher stopped)."""
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S or not self.inflight:
            return
        self.last_beat = now
        for run_id in self.inflight:
            with contextlib.suppress(StoreError):
                self.store.control.beat(run_id)

    # -- claims ---------------------------------------------------------------------------------
    def _claim(self) -> None:
        """Claim queued runs while the cluster has room (CUDA runs first: a GPU and a CPU each,
        CPU runs one CPU each) and submit them."""
        import ray

        total = ray.cluster_resources()
        cpus = int(total.get("CPU", 0)) - len(self.inflight)
        gpus = int(total.get("GPU", 0)) - sum(f.gpu for f in self.inflight.values())
        for device in self._queued_devices():
            gpu = cluster.wants_gpu(device, self.summary)
            if gpu and not total.get("GPU"):
                self._note_no_gpu(device)
                continue
            while cpus > 0 and (gpus > 0 or not gpu):
                run_id = jobs.claim_next(self.store, device, self.name)
                if run_id is None:
                    break
                self._launch(run_id, gpu)
                cpus, gpus = cpus - 1, gpus - gpu

    def _queued_devices(self) -> list[str]:
        """Devices of queued own runs, CUDA ones first."""
        frame = self.store.frame(
            f"SELECT DISTINCT {queries.DEVICE_SQL} AS device "
            "FROM runs WHERE status = 'queued' AND origin = 'own'")
        return sorted(frame["device"],
                      key=lambda d: (not cluster.wants_gpu(d, self.summary), d))

    def _launch(self, run_id: int, gpu: bool) -> None:
        """Submit a claimed run as a Ray task asking for what its memory plan needs (one GPU
        for a GPU run, the plan's host memory) and one CPU, with no retry by Ray: a killed
        worker fails the run, a lost node queues it again (``_finish``)."""
        from core.runs.registry import spec_from_dict

        self.attempts += 1
        try:
            values = json.loads(self.store.frame("SELECT spec FROM runs WHERE id = ?",
                                                 [run_id]).iloc[0, 0])
            need = cluster.request(spec_from_dict(values), self.summary)
            memory = {"memory": need.memory} if need.memory else {}
            ref = self.task.options(num_cpus=1, num_gpus=int(gpu), max_retries=0,
                                    name=f"sparsebench-run-{run_id}", **memory).remote(
                run_id, self.attempts, values, self.channel)
        except Exception as exc:
            self._fail(run_id, f"could not submit it to Ray: {type(exc).__name__}: {exc}")
            return
        self.inflight[run_id] = InFlight(run_id, ref, gpu, self.attempts)
        self.store.append_log(run_id, f"submitted to Ray ({'1 GPU' if gpu else '1 CPU'}, "
                                      f"{need.memory / 2**30:.1f} GiB of memory) by {self.name}")

    def _note_no_gpu(self, device: str) -> None:
        """Say once in each waiting run's log that the cluster has no GPU (it stays queued)."""
        frame = self.store.frame(
            f"SELECT id FROM runs WHERE status = 'queued' AND origin = 'own' AND "
            f"{queries.DEVICE_SQL} = ?", [device])
        for run_id in (int(i) for i in frame["id"]):
            if run_id not in self.noted:
                self.noted.add(run_id)
                self.store.append_log(run_id, f"waiting: the Ray cluster has no GPU for device "
                                              f"{device}; the run stays queued")


def failure_message(exc: Exception, where: str = "") -> str:
    """A failed task's error, worded for the Runs page: the run's own exception as the local
    worker words it, or what happened to its Ray worker."""
    from ray import exceptions as rx

    at = f" ({where})" if where else ""
    if isinstance(exc, rx.RayTaskError):
        cause = exc.cause
        return f"{type(cause).__name__}: {cause}"
    if isinstance(exc, rx.OutOfMemoryError):
        return (f"Ray killed the run's worker{at}: its machine ran out of memory; results were "
                f"not stored. {exc}")
    if isinstance(exc, rx.WorkerCrashedError):
        return (f"the Ray worker process running it{at} died unexpectedly (killed, or crashed: "
                "Ray reports a worker crash); results were not stored")
    if isinstance(exc, rx.TaskCancelledError):
        return f"its Ray task was cancelled outside SparseBench{at}; results were not stored"
    if isinstance(exc, (rx.NodeDiedError, rx.LocalRayletDiedError)):
        return f"the machine of its Ray worker{at} left the cluster: {exc}; results were not stored"
    return f"Ray could not execute it{at}: {type(exc).__name__}: {exc}"


def serve(db: Path, address: str | None = None, idle_exit_s: float = 60.0,
          **local: Any) -> int:
    """The dispatcher process: hold the lock, join Ray, drain the queue until idle."""
    import ray

    with worker.device_lock(db, LOCK, wait_s=worker.LOCK_WAIT_S) as acquired:
        worker._clear_starting(db, LOCK)  # serving (or leaving): no longer "starting"
        if not acquired:
            log.info("another Ray dispatcher already serves %s", db)
            return 0
        store = Store(db).init()
        log.info("joined %s", connect(address, **local))
        dispatcher = Dispatcher(store)
        recovered = dispatcher.recover()
        if recovered:
            log.warning("runs %s were left running by a dead dispatcher: queued again (or "
                        "failed, retries spent)", recovered)
        idle_since = time.monotonic()
        try:
            while time.monotonic() - idle_since < idle_exit_s:
                try:
                    if dispatcher.step():
                        idle_since = time.monotonic()
                except StoreError as exc:  # keep serving; the next step retries
                    log.warning("store busy: %s", exc)
                time.sleep(POLL_S)
        finally:
            dispatcher.stop("the Ray dispatcher stopped before the run ended")
            ray.shutdown()
    return 0


class RayExecutor:
    """Runs execute on a Ray cluster; this machine runs the one dispatcher that writes the
    results file (started here when none is alive, like the local worker)."""

    def __init__(self, store: Store, address: str | None = None,
                 idle_exit_s: float | None = None) -> None:
        """``address``: the cluster (None: ``SPARSEBENCH_RAY_ADDRESS`` or a local instance)."""
        self.store = store
        self.address = address
        self.idle_exit_s = idle_exit_s if idle_exit_s is not None else float(
            os.environ.get("SPARSEBENCH_WORKER_IDLE_S", "60"))

    def submit(self, run_id: int) -> None:
        """Make sure a dispatcher drains the queue (it claims ``run_id`` when it has room)."""
        frame = self.store.frame("SELECT status FROM runs WHERE id = ?", [run_id])
        if frame.empty:
            raise ValueError(f"no run {run_id}")
        if frame.iloc[0, 0] in jobs.ACTIVE and not self.dispatcher_alive():
            self.start()

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run at once; the dispatcher stops a running one's Ray task."""
        return jobs.request_cancel(self.store, run_id)

    def poll(self) -> dict[str, Any]:
        """Fail runs without a heartbeat held outside Ray (the dispatcher recovers its own);
        the dispatcher and what runs where (``running``: run id -> Ray node and worker pid)."""
        failed = jobs.recover_stale(self.store, skip_prefix=WORKER_PREFIX)
        return {"executor": "ray", "address": self.address or "local Ray instance",
                "failed": failed, "dispatcher": self.dispatcher_alive(),
                "running": jobs.running_where(self.store)}

    def ensure_workers(self) -> list[str]:
        """As ``LocalExecutor.ensure_workers``: fail dead runs held outside Ray, start the
        dispatcher when runs are pending (or left running by a dead one, which it queues
        again) and none is alive; returns what was started."""
        jobs.recover_stale(self.store, skip_prefix=WORKER_PREFIX)
        pending = self.store.frame("SELECT count(*) FROM runs WHERE origin = 'own' AND "
                                   "status IN ('queued', 'running')").iloc[0, 0]
        if not pending or self.dispatcher_alive():
            return []
        self.start()
        return [LOCK]

    def dispatcher_alive(self) -> bool:
        """Whether a dispatcher serves this results file (or is starting up)."""
        path = Path(self.store.path)
        return worker.worker_alive(path, LOCK) or worker.worker_starting(path, LOCK)

    def start(self) -> subprocess.Popen:
        """Start the dispatcher process (it exits when idle)."""
        path = Path(self.store.path)
        command = [sys.executable, "-m", "core.execution.ray", "--db", str(path), "serve",
                   "--idle-exit", str(self.idle_exit_s)]
        if self.address:
            command += ["--address", self.address]
        with (config.log_dir(path) / "ray-dispatcher.log").open("ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=config.REPO_ROOT,
                                    start_new_session=True)
        worker.starting_path(path, LOCK).write_text(f"{proc.pid}\n")
        return proc


def main(argv: list[str] | None = None) -> int:
    """The command line of the dispatcher."""
    parser = argparse.ArgumentParser(prog="python -m core.execution.ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="dispatch queued runs to Ray")
    serve_cmd.add_argument("--address", default=None,
                           help="Ray cluster (default SPARSEBENCH_RAY_ADDRESS; none: local)")
    serve_cmd.add_argument("--idle-exit", type=float, default=60.0,
                           help="exit after this many idle seconds")
    serve_cmd.add_argument("--num-cpus", type=int, default=None,
                           help="CPUs of a local Ray instance (default: all)")
    describe_cmd = sub.add_parser("describe", help="write what the cluster offers and exit")
    describe_cmd.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    if args.command == "describe":
        connect(args.address)
        print(cluster.describe(write_summary(args.db or config.db_path())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop() runs in serve's finally
    local = {"num_cpus": args.num_cpus} if args.num_cpus else {}
    return serve(args.db or config.db_path(), args.address, args.idle_exit, **local)


if __name__ == "__main__":
    sys.exit(main())
