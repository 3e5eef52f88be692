"""The devices of this machine as the executors see them: one slot per GPU and one for
the CPU, what each slot's worker serves, and the environment it starts with.

A run's ``device`` is ``auto`` (any GPU with room; the CPU where there is none), ``cpu``,
``cuda:N`` (pinned to GPU N; ``cuda`` means ``cuda:0``) or ``mps``.  The worker of slot
``cuda:N`` starts with ``CUDA_VISIBLE_DEVICES`` naming that GPU alone, so its runs compute on
``cuda`` inside their process and never touch another GPU.

GPUs are counted without importing torch (the pages call this on every refresh): the entries of
``/proc/driver/nvidia/gpus``, narrowed by this process's ``CUDA_VISIBLE_DEVICES``.
``SPARSEBENCH_SIMULATED_GPUS=N`` makes the executor behave as if N GPUs were there while runs
compute on the CPU: for tests and demonstrations of the scheduling on a machine without GPUs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

AUTO = "auto"
SIMULATED_ENV = "SPARSEBENCH_SIMULATED_GPUS"
#: Set in a slot worker's environment: the slot it serves (its GPU is then the only visible one).
SLOT_ENV = "SPARSEBENCH_SLOT"
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
#: The device field's accepted values, in words (messages and the form's help).
ACCEPTED = "auto, cpu, cuda, cuda:N or mps"


def simulated() -> int | None:
    """The number of simulated GPUs (``SPARSEBENCH_SIMULATED_GPUS``), or None."""
    value = os.environ.get(SIMULATED_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{SIMULATED_ENV}={value!r} is not a whole number of GPUs")
    return int(value)


def gpus() -> list[str]:
    """The GPUs this machine gives the executor, as ``CUDA_VISIBLE_DEVICES`` names them (the
    index into the list is the run's ``cuda:N``)."""
    count = simulated()
    if count is not None:
        return [str(i) for i in range(count)]
    try:
        present = len(list(NVIDIA_PROC.iterdir()))
    except OSError:
        present = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(present)]
    named = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return named[:present] if present else []


def normalize(device: str) -> str:
    """One name per device: ``cuda`` is ``cuda:0``; other values as given (stripped)."""
    device = device.strip()
    return "cuda:0" if device == "cuda" else device


def default_device() -> str:
    """The form's default: ``auto`` where the machine has a GPU, else ``cpu``."""
    return AUTO if gpus() else "cpu"


def gpu_index(device: str) -> int | None:
    """N of ``cuda:N`` (``cuda`` is 0); None for other devices."""
    found = re.fullmatch(r"cuda(?::(\d+))?", device)
    return int(found.group(1) or 0) if found else None


def slots() -> list[str]:
    """The worker slots of this machine: one per GPU, then the CPU."""
    return [f"cuda:{i}" for i in range(len(gpus()))] + ["cpu"]


def slots_for(device: str) -> list[str]:
    """The slots whose worker may execute a run of ``device``: every GPU for ``auto`` (the CPU
    where there is none), the one GPU a pinned run names, else the device itself."""
    device = normalize(device)
    if device == AUTO:
        return [s for s in slots() if s != "cpu"] or ["cpu"]
    return [device]


def serves(slot: str) -> list[str]:
    """The run devices the worker of ``slot`` claims: its own (``cuda:0`` also as ``cuda``,
    as older runs stored it) and ``auto`` on a GPU, or on the CPU of a machine without one."""
    names = [slot, "cuda"] if slot == "cuda:0" else [slot]
    if gpu_index(slot) is not None or (slot == "cpu" and not gpus()):
        names.append(AUTO)
    return names


def worker_environment(slot: str) -> dict[str, str] | None:
    """The environment of the worker of ``slot``: this one, with ``CUDA_VISIBLE_DEVICES``
    naming the slot's GPU alone (none for the CPU slot: its runs never touch a GPU).  None
    where this process already is that slot's worker (its environment is already so)."""
    if os.environ.get(SLOT_ENV) == slot:
        return None
    env = {**os.environ, SLOT_ENV: slot}
    index = gpu_index(slot)
    names = gpus()
    if index is not None:
        env["CUDA_VISIBLE_DEVICES"] = names[index] if index < len(names) else str(index)
    elif slot == "cpu" and names:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def compute_device(slot: str | None, device: str) -> str:
    """Where a run of ``device`` computes inside the worker process of ``slot``: ``cuda`` (the
    one GPU it sees) in a GPU slot, the CPU when the GPUs are simulated; without a slot (a run
    executed by hand), ``auto`` is the first GPU torch sees or the CPU."""
    if slot is not None and gpu_index(slot) is not None:
        return "cpu" if simulated() is not None else "cuda"
    if slot is not None:
        return slot
    if normalize(device) != AUTO:
        return normalize(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def planning_device(device: str) -> str:
    """The device a run's memory plan is checked against at submit: ``auto`` as the first GPU
    (the executor places it on one with room), or the CPU where there is none."""
    if normalize(device) == AUTO:
        return "cuda:0" if gpus() else "cpu"
    return normalize(device)
