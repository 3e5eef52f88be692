"""What a Ray cluster offers and what a run needs from it.

* ``runtime_environment``: what every task carries, so that a node needs only Ray and the
  requirements: the project's ``core`` package (``py_modules``) and the submitting process's
  ``SPARSEBENCH_*`` / ``HF_*`` settings (``SPARSEBENCH_EXECUTOR=local``: a task executes on its
  node, and checks the run there).
* the cluster summary (nodes with their CPUs, GPUs and memory; the Ray dashboard's address),
  written by the dispatcher beside the results file and read by the pages and the submit checks.
* ``submit_problems``: a run's files must be hub ids or paths under ``SPARSEBENCH_SHARED_DIR``,
  and its memory plan and GPU must fit one node of the cluster.
* ``request``: a task's resources from the run's memory plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core import config
from core.engine import devices

SHIPPED_PREFIXES = ("SPARSEBENCH_", "HF_")
NOT_SHIPPED = (devices.SLOT_ENV, "SPARSEBENCH_RAY_ADDRESS")
#: A summary older than this is written again before a submit check reads it.
FRESH_S = 120.0
GIB = 1024**3


def runtime_environment() -> dict[str, Any]:
    """The Ray ``runtime_env`` of the dispatcher's job: the code and the settings it runs on."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(SHIPPED_PREFIXES) and k not in NOT_SHIPPED}
    env["SPARSEBENCH_EXECUTOR"] = "local"
    return {"py_modules": [str(config.REPO_ROOT / "core")], "env_vars": env,
            "excludes": ["__pycache__", "*.pyc"]}


# -- the summary --------------------------------------------------------------------------------
def summarize(nodes: list[dict[str, Any]], address: str | None, dashboard: str | None
              ) -> dict[str, Any]:
    """The summary of ``ray.nodes()``: the live nodes' names and resources."""
    alive = [{"id": n["NodeID"], "name": n.get("NodeManagerHostname") or n["NodeManagerAddress"],
              "address": n["NodeManagerAddress"], "cpus": float(n["Resources"].get("CPU", 0)),
              "gpus": float(n["Resources"].get("GPU", 0)),
              "memory": int(n["Resources"].get("memory", 0))}
             for n in nodes if n.get("Alive")]
    return {"address": address or "local Ray instance", "dashboard": dashboard,
            "nodes": alive, "written_at": time.time()}


def write_summary(db: Path | str, summary: dict[str, Any]) -> None:
    """Replace the summary beside results file ``db`` (never half written)."""
    path = config.ray_cluster_file(db)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(summary))
    partial.replace(path)


def read_summary(db: Path | str, fresh_s: float | None = None) -> dict[str, Any] | None:
    """The summary the dispatcher wrote (None: none, unreadable, or older than ``fresh_s``)."""
    path = config.ray_cluster_file(db)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if fresh_s is not None and time.time() - float(summary.get("written_at", 0)) > fresh_s:
        return None
    return summary


def local_summary() -> dict[str, Any]:
    """This machine as the one node of a local Ray instance."""
    from core.runs import preflight

    node = {"id": "local", "name": os.uname().nodename, "address": "127.0.0.1",
            "cpus": float(os.cpu_count() or 1), "gpus": float(len(devices.gpus())),
            "memory": int(preflight.host_memory() or 0)}
    return {"address": "local Ray instance", "dashboard": None, "nodes": [node],
            "written_at": time.time()}


def describe(summary: dict[str, Any]) -> str:
    """'2 nodes, 3 CPUs, 0 GPUs (a: 1 CPU, 0 GPUs, 23.1 GiB; b: ...)'."""
    nodes = summary["nodes"]
    each = "; ".join(f"{n['name']}: {n['cpus']:g} CPU, {n['gpus']:g} GPU, "
                     f"{n['memory'] / GIB:.1f} GiB" for n in nodes)
    return (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, "
            f"{sum(n['cpus'] for n in nodes):g} CPUs, {sum(n['gpus'] for n in nodes):g} GPUs "
            f"({each})")


def line(summary: dict[str, Any] | None) -> str:
    """The Runs page's line: where runs execute and what the cluster offers."""
    if summary is None:
        return ("Runs execute on Ray; the cluster's nodes are listed once the dispatcher has "
                "started.")
    text = f"Runs execute on Ray ({summary['address']}): {describe(summary)}."
    if summary.get("dashboard"):
        url = summary["dashboard"]
        text += f" [Ray dashboard]({url if '://' in url else 'http://' + url})"
    return text


def current_summary(db: Path | str, address: str | None) -> dict[str, Any]:
    """What the cluster offers: the dispatcher's summary when fresh, else asked of the cluster
    now (``python -m core.execution.ray describe``); a local instance is this machine."""
    found = read_summary(db, FRESH_S)
    if found is not None:
        return found
    if address is None:
        return local_summary()
    subprocess.run([sys.executable, "-m", "core.execution.ray", "--db", str(db), "describe",
                    "--address", address], cwd=config.REPO_ROOT, capture_output=True,
                   timeout=120, check=False)
    found = read_summary(db)
    if found is None:
        raise ValueError(f"the Ray cluster at {address} could not be reached to check the run "
                         "(is it started? see SPARSEBENCH_RAY_ADDRESS)")
    return found


# -- what a run needs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A task's resource request."""

    gpus: int
    memory: int  # bytes of host memory (Ray's ``memory`` resource); 0: not planned


def wants_gpu(device: str, summary: dict[str, Any] | None) -> bool:
    """Whether a run of ``device`` asks for a GPU: a CUDA device, or ``auto`` on a cluster
    with GPUs."""
    if devices.gpu_index(device) is not None:
        return True
    return device == devices.AUTO and bool(summary) and any(
        n["gpus"] >= 1 for n in summary["nodes"])


def request(spec: Any, summary: dict[str, Any] | None) -> Request:
    """One GPU for a GPU run (the engine computes on one device) and the host memory of the
    run's plan."""
    from core.runs import preflight

    gpu = wants_gpu(spec.device, summary)
    work = replace(spec.work(), device="cuda:0" if gpu else "cpu")
    plan = preflight.unbounded_plan(spec.model, work, spec.trust_remote_code)
    return Request(int(gpu), plan.peak_host if plan is not None else 0)


def executor_problems(db: Path | str, spec: Any) -> list[str]:
    """What keeps a checked spec from executing where the configured executor runs it: []
    for the local executor (the spec's own checks ran here), the cluster's checks for Ray."""
    if config.executor_name() != "ray":
        return []
    return cluster_problems(db, os.environ.get("SPARSEBENCH_RAY_ADDRESS") or None, spec)


def cluster_problems(db: Path | str, address: str | None, spec: Any) -> list[str]:
    """``submit_problems`` against the cluster at ``address`` (None: a local instance; the
    shared folder is then required only where ``SPARSEBENCH_SHARED_DIR`` is set)."""
    clustered = address is not None or config.shared_dir() is not None
    return submit_problems(spec, current_summary(db, address), clustered)


def submit_problems(spec: Any, summary: dict[str, Any], clustered: bool) -> list[str]:
    """What keeps a run off the cluster: a local file outside the shared folder (only on a
    real cluster, ``clustered``), or a GPU or memory need no node has."""
    problems = shared_problems(spec) if clustered else []
    need = request(spec, summary)
    nodes = summary["nodes"]
    fitting = [n for n in nodes if n["gpus"] >= need.gpus and n["memory"] >= need.memory]
    if not fitting:
        field, gpu = ("Device", f"{need.gpus} GPU and ") if need.gpus else ("Memory", "")
        problems.append(f"{field}: this run needs {gpu}about {need.memory / GIB:.1f} GiB of "
                        f"memory on one node, but the Ray cluster offers {describe(summary)}."
                        + (" Use device cpu, or a cluster with a GPU node." if need.gpus else ""))
    return problems


def shared_problems(spec: Any) -> list[str]:
    """Local paths of the run outside ``SPARSEBENCH_SHARED_DIR`` (every path, when it is
    unset): the nodes cannot read them."""
    shared = config.shared_dir()
    fields = type(spec).model_fields
    problems = []
    for name, value in spec.to_dict().items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not _local_path(item):
                continue
            if shared is not None and _inside(item, shared):
                continue
            label = fields[name].title or name
            where = (f"under SPARSEBENCH_SHARED_DIR ({shared})" if shared is not None else
                     "under a folder every node mounts at the same path, named by "
                     "SPARSEBENCH_SHARED_DIR (unset now)")
            problems.append(f"{label}: {item!r} is a path on this machine; with the Ray "
                            f"executor a run's files must be hub ids or paths {where}.")
    return problems


def _local_path(value: str) -> bool:
    from core.runs.specs import looks_like_path

    return looks_like_path(value) or value.endswith(".txt")


def _inside(path: str, folder: Path) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(folder.resolve())
