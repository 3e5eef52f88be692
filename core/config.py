"""Paths and settings, all overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The offline default model and text: both install from the package registry.
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TEXT = "wiki-offline"


def db_path() -> Path:
    """The DuckDB results file (``SPARSEBENCH_DB``, default ``results.duckdb`` in the repo; an
    empty value counts as unset)."""
    return Path(os.environ.get("SPARSEBENCH_DB") or REPO_ROOT / "results.duckdb")


def cache_dir() -> Path:
    """Where converted models and prepared texts are cached (``SPARSEBENCH_CACHE``)."""
    default = Path.home() / ".cache" / "sparsebench"
    path = Path(os.environ.get("SPARSEBENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_partial(target: Path) -> Path:
    """A work folder or file beside ``target`` that no other process writes (two workers or
    dashboards sharing a cache may build the same entry at once)."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


def publish(partial: Path, target: Path) -> None:
    """Move a finished cache entry into place; when another process placed it first, keep
    theirs (it is the same entry) and drop this one."""
    import shutil

    try:
        partial.replace(target)  # atomic; a folder onto a folder another process placed fails
    except OSError:
        if not target.exists():
            raise
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)


def log_dir(db: Path) -> Path:
    """Where the logs of the runs of results file ``db`` go: one folder per results file
    (``<name>-<hash of its absolute path>``), so files sharing a cache never mix their logs."""
    import hashlib

    resolved = Path(db).expanduser().resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    path = cache_dir() / "logs" / f"{resolved.stem}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


#: The values ``SPARSEBENCH_EXECUTOR`` may take.
EXECUTORS = ("local", "ray")


def ray_cluster_file(db: Path | str) -> Path:
    """Where the Ray dispatcher of results file ``db`` writes what the cluster offers (nodes,
    CPUs, GPUs, memory, the Ray dashboard's address), for the pages and the submit checks."""
    db = Path(db)
    return db.with_name(f"{db.name}.ray-cluster.json")


def shared_dir() -> Path | None:
    """The folder every Ray node mounts at the same path (``SPARSEBENCH_SHARED_DIR``), or
    None."""
    value = os.environ.get("SPARSEBENCH_SHARED_DIR", "").strip()
    return Path(value).expanduser() if value else None


def executor_name() -> str:
    """Where runs execute (``SPARSEBENCH_EXECUTOR``, default ``local``), checked."""
    name = os.environ.get("SPARSEBENCH_EXECUTOR", "").strip().lower() or "local"
    if name not in EXECUTORS:
        raise ValueError(f"SPARSEBENCH_EXECUTOR={name!r} is not an executor; allowed: "
                         f"{', '.join(EXECUTORS)}")
    return name
