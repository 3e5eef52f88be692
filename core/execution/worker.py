"""The background worker: executes queued runs one at a time per device slot.

    python -m core.execution.worker serve --device cuda:1  # started by the dashboard, or by hand
    python -m core.execution.worker execute RUN_ID         # one run (what ``serve`` spawns)

A slot is one GPU (``cuda:N``) or the CPU (``core.engine.devices``).  The worker of a GPU slot
claims the runs pinned to its GPU and ``auto`` runs whose memory plan fits its free memory; the
executor starts it with ``CUDA_VISIBLE_DEVICES`` naming that GPU alone.

``serve`` holds an exclusive lock file per slot, so at most one worker serves a slot, and
keeps a serving loop alive in a forked process: a loop killed mid-run is replaced at once, and
the new loop fails the run it left and goes on with the queue (no page needs to be open).  Each
run executes in a child process that the loop supervises: it writes the run's heartbeat (to the
control store), stops the child when the user cancels, and records a crash.  The child dies with
its loop (PR_SET_PDEATHSIG), so a killed worker never leaves an orphan computing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from core import config
from core.engine import devices
from core.execution import jobs
from core.execution.run import run_and_store
from core.runs.progress import Tracker, throttled
from core.runs.registry import spec_from_dict, stage_plan
from core.store import record
from core.store.db import Store, StoreError

log = logging.getLogger("sparsebench.worker")

HEARTBEAT_S = 3.0
POLL_S = 0.5
CANCEL_GRACE_S = 3.0
PROGRESS_EVERY_S = 0.5
LOCK_WAIT_S = 2.0  # how long a starting worker tries for the device lock
MAX_CRASHES_PER_MINUTE = 5
RECOVER_EVERY_S = 10.0
CLAIM_RETRY_S = 1.0  # the wait before claiming again when the results file could not be read
STOPPED = "the worker running it stopped (killed or crashed); results were not stored"


def describe_exit(code: int | None) -> str:
    """'was killed by signal 9 (SIGKILL: ...)' / 'exited with code 1'."""
    if code == -signal.SIGKILL:
        return ("was killed by signal 9 (SIGKILL: most often the system's out-of-memory killer, "
                "when the run needs more memory than is free; see the memory plan at the top "
                "of its log)")
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def lock_path(db: Path, device: str) -> Path:
    """The lock file of a slot (``cuda`` and ``cuda:0`` are one GPU: one lock)."""
    return db.with_name(f"{db.name}.worker-{devices.normalize(device).replace(':', '_')}.lock")


@contextlib.contextmanager
def device_lock(db: Path, device: str, wait_s: float = 0.0) -> Iterator[bool]:
    """Try to hold the worker lock of ``device`` (for up to ``wait_s`` seconds: a page that
    probes the lock holds it for an instant); yields whether it was acquired."""
    path = lock_path(db, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_alive(db: Path, device: str) -> bool:
    """Whether a worker currently serves ``device`` (it holds the lock)."""
    with device_lock(db, device) as acquired:
        return not acquired


def starting_path(db: Path, device: str) -> Path:
    """Where the executor notes the worker it started and not yet serving (pid)."""
    return lock_path(db, device).with_suffix(".starting")


def worker_starting(db: Path, device: str, within_s: float = 120.0) -> bool:
    """Whether a worker started for ``device`` in the last ``within_s`` s is still alive (it
    may still be importing before it takes the lock)."""
    path = starting_path(db, device)
    try:
        pid = int(path.read_text().strip())
        young = time.time() - path.stat().st_mtime < within_s
    except (OSError, ValueError):
        return False
    return young and jobs.process_alive(pid)


def _clear_starting(db: Path, device: str) -> None:
    """This worker is serving (or leaving): it no longer counts as starting."""
    path = starting_path(db, device)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


# -- the child: one run ---------------------------------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the worker) dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def execute(db: Path, run_id: int, slot: str | None = None) -> int:
    """Execute one stored run (in the worker of ``slot``: on the device that slot computes on);
    progress and log lines go to the control store as it goes, the start and the results to
    the results file (waiting while another program holds it)."""
    store = Store(db).patient()
    frame = store.frame("SELECT spec FROM runs WHERE id = ?", [run_id])
    if frame.empty:
        print(f"no run {run_id}", file=sys.stderr)
        return 2
    spec = spec_from_dict(json.loads(frame.iloc[0, 0]))
    compute = devices.compute_device(slot, spec.device)
    spec = spec.model_copy(update={"device": compute})
    progress = throttled(Tracker(stage_plan(spec)),
                         lambda *report: store.control.set_progress(run_id, *report),
                         PROGRESS_EVERY_S)

    def say(line: str) -> None:
        print(line, flush=True)
        store.append_log(run_id, line)

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    say(f"executing on {os.uname().nodename}, slot {slot or 'none'}, device {compute}"
        + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
    try:
        run_and_store(store, run_id, spec, progress, say)
    except Exception as exc:  # already recorded as failed by run_and_store
        say(f"failed: {type(exc).__name__}: {exc}")
        return 1
    say("done")
    return 0


# -- the supervisor -------------------------------------------------------------------------
class Worker:
    """Serves queued runs of one device until idle for ``idle_exit_s`` seconds."""

    def __init__(self, db: Path, device: str = "cpu", idle_exit_s: float = 60.0) -> None:
        """Serve the slot of ``device`` (``auto``: the first GPU, or the CPU)."""
        self.db = db
        self.device = devices.slots_for(device)[0]
        self.idle_exit_s = idle_exit_s
        self.store = Store(db)
        self.name = f"{os.uname().nodename}:{os.getpid()}:{self.device}"
        self.last_recovery = 0.0
        self.told: set[int] = set()  # auto runs told they wait for room on this GPU

    def serve(self) -> int:
        """Hold the device lock and keep a serving loop alive in a forked process.  A loop
        that dies mid-run (killed, crashed) is replaced at once: the new loop fails the run it
        left and serves the rest of the queue, with no page open."""
        with device_lock(self.db, self.device, wait_s=LOCK_WAIT_S) as acquired:
            _clear_starting(self.db, self.device)
            if not acquired:
                log.info("another worker already serves %s", self.device)
                return 0
            reason, crashes = STOPPED, []
            while (code := self._fork_loop(reason)) != 0:
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < 60.0] + [now]
                if len(crashes) > MAX_CRASHES_PER_MINUTE:
                    log.error("the serving loop of %s died %d times in a minute; giving up",
                              self.device, len(crashes))
                    return 1
                reason = f"the worker running it {describe_exit(code)}; results were not stored"
                log.warning("the serving loop of %s %s; starting another", self.device,
                            describe_exit(code))
        return 0

    def _fork_loop(self, reason: str) -> int:
        """Run ``drain`` in a forked copy of this process (imports already done, the lock
        shared); its exit code (negative: killed by that signal)."""
        pid = os.fork()
        if pid == 0:  # the loop: never leaves through the parent's lock context
            code = 1
            try:
                self.name = f"{os.uname().nodename}:{os.getpid()}:{self.device}"
                code = self.drain(reason)
            except BaseException:
                log.exception("the serving loop of %s failed", self.device)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def drain(self, reason: str = "") -> int:
        """Fail the runs a dead predecessor left running (with ``reason``), store the results
        that wait on disk, then execute queued runs until idle for ``idle_exit_s``."""
        self.store.init()
        record.flush_held(self.store)
        failed = jobs.recover_stale(self.store, device=self.device, reason=reason or STOPPED)
        if failed:
            log.warning("marked runs %s failed: %s", failed, reason or STOPPED)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < self.idle_exit_s:
            try:
                run_id = self.claim()
            except StoreError as exc:  # the results file is held elsewhere: wait, fail nothing
                if not self.db.is_file():
                    log.warning("the results file %s is gone; the worker stops", self.db)
                    return 0
                log.warning("cannot claim yet: %s", exc)
                time.sleep(CLAIM_RETRY_S)
                idle_since = time.monotonic()
                continue
            if run_id is None:
                self._recover_now_and_then()
                time.sleep(1.0)
                continue
            self.supervise(run_id)
            idle_since = time.monotonic()
        return 0

    def claim(self) -> int | None:
        """Claim the oldest queued run this slot serves: pinned here, or ``auto`` when its
        memory plan fits this GPU's free memory (else left for another GPU, said once)."""
        skip: tuple[int, ...] = ()
        while (found := jobs.next_queued(self.store, devices.serves(self.device), skip)):
            run_id, device = found
            if device == devices.AUTO and not self.room_for(run_id):
                skip += (run_id,)
                continue
            if jobs.claim(self.store, run_id, self.name):
                return run_id
        return None

    def room_for(self, run_id: int) -> bool:
        """Whether an ``auto`` run's memory plan fits what this slot's GPU has free now (the
        CPU slot and simulated GPUs: always)."""
        if devices.gpu_index(self.device) is None or devices.simulated() is not None:
            return True
        from core.runs import preflight

        frame = self.store.frame("SELECT spec FROM runs WHERE id = ?", [run_id])
        spec = spec_from_dict(json.loads(frame.iloc[0, 0]))
        cfg, _ = preflight.load_config(spec.model, spec.trust_remote_code)
        if cfg is None:  # nothing to plan with: the run's own start says what is wrong
            return True
        work = replace(spec.work(), device="cuda:0")  # the one GPU this worker sees
        problems = preflight.plan_problems(cfg, work, at_start=True)
        if problems and run_id not in self.told:
            self.told.add(run_id)
            self.store.append_log(run_id, f"waiting: not on GPU {self.device} yet: "
                                          f"{' '.join(problems)}")
        return not problems

    def _recover_now_and_then(self) -> None:
        """While idle, every ``RECOVER_EVERY_S``: fail the device's runs that stopped beating
        (a command-line run killed with no page open)."""
        now = time.monotonic()
        if now - self.last_recovery < RECOVER_EVERY_S:
            return
        self.last_recovery = now
        with contextlib.suppress(StoreError):
            jobs.recover_stale(self.store, device=self.device)

    def supervise(self, run_id: int, on_poll: Callable[[], None] | None = None) -> str:
        """Run one claimed run in a child process; returns its final status.  ``on_poll`` is
        called at every poll (the command line prints progress and log lines with it)."""
        log_file = config.log_dir(self.db) / f"run-{run_id}.log"
        with log_file.open("ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "core.execution.worker", "--db", str(self.db), "execute",
                 str(run_id), "--slot", self.device],
                stdout=out, stderr=subprocess.STDOUT, cwd=config.REPO_ROOT,
                env=devices.worker_environment(self.device), preexec_fn=_die_with_parent,
            )
            cancelled = self._watch(run_id, child, on_poll)
        return self._finish(run_id, child.returncode, cancelled, log_file)

    def _watch(self, run_id: int, child: subprocess.Popen,
               on_poll: Callable[[], None] | None = None) -> bool:
        last_beat = 0.0
        while child.poll() is None:
            if on_poll is not None:
                with contextlib.suppress(StoreError):
                    on_poll()
            now = time.monotonic()
            try:
                if now - last_beat >= HEARTBEAT_S:
                    self.store.control.beat(run_id, self.name)
                    last_beat = now
                cancel = self.store.control.cancel_requested(run_id)
            except StoreError as exc:  # keep supervising; the next poll retries
                log.warning("control store busy: %s", exc)
                cancel = False
            if cancel:
                child.terminate()
                try:
                    child.wait(CANCEL_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                return True
            time.sleep(POLL_S)
        return False

    def _finish(self, run_id: int, code: int | None, cancelled: bool, log_file: Path) -> str:
        """The run's final status; records it when the child could not (killed, cancelled),
        or stores the result the child computed and held before it died."""
        store = self.store.patient()
        status = store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0]
        if status != "running":  # the child recorded done / failed itself
            store.control.forget(run_id)
            return str(status)
        if not cancelled and record.flush_held(store, [run_id]):
            return "done"
        store.control.release(run_id)
        if cancelled:
            reason, final = "cancelled by the user; no results were stored", "cancelled"
        else:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            reason = f"the run's process {describe_exit(code)}. Last output: {' | '.join(tail)}"
            final = "failed"
        store.move(run_id, final, finished_at=datetime.now(), error=reason)
        store.append_log(run_id, reason)
        store.control.forget(run_id)
        return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.execution.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="execute queued runs of one device")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--idle-exit", type=float, default=60.0,
                       help="exit after this many idle seconds")
    one = sub.add_parser("execute", help="execute one run (used by serve)")
    one.add_argument("run_id", type=int)
    one.add_argument("--slot", default=None, help="the slot of the worker running it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    db = args.db or config.db_path()
    if args.command == "execute":
        _die_with_parent()
        return execute(db, args.run_id, args.slot)
    return Worker(db, args.device, args.idle_exit).serve()


if __name__ == "__main__":
    sys.exit(main())
