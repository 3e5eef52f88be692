"""What a run executed on: versions and device, stored with every run."""

from __future__ import annotations

import platform
import resource
import sys
from importlib import metadata

import torch

PACKAGES = ("torch", "transformers", "datasets", "lm_eval", "duckdb")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def describe(device: str = "cpu") -> dict[str, object]:
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        **{name: _version(name) for name in PACKAGES},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory of this process so far: GPU allocations on CUDA, resident set size otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
