"""What a run executed on: versions and device, stored with every run."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import resource
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "datasets", "lm_eval", "duckdb")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def describe(device: str = "cpu") -> dict[str, object]:
    import torch  # here, not at the top: the data module (and the dashboard) import this one

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
    """Peak memory of this process so far: GPU allocations on CUDA, else the resident set's
    high-water mark (``VmHWM``: of this process's own memory; ``ru_maxrss`` carries a forking
    parent's peak over into its children, so a run spawned by a big process would report it)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Hand the C heap's freed pages back to the OS (glibc ``malloc_trim``); False elsewhere.

    A whole-text tokenizer call allocates about 450 bytes a token in the Rust tokenizer and frees
    them once the ids are out, but the allocator keeps the pages: on SmolLM2's offline text that
    is 170 MiB of resident memory held through the whole run."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX); without it a bf16
    matrix product is emulated and many times slower than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def free_device_cache() -> None:
    """Hand the GPU's cached free blocks back (between blocks: a block's temporaries differ in
    size from the next one's); nothing without a GPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
