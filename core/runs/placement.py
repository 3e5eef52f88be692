"""Where a run's weights live while it executes, decided by its memory plan when it starts.

:func:`place` finds the checkpoint on this machine, resolves dtype 'auto', fits the run's memory
plan (``core.engine.plan``) to what is free now and refuses the run with the numbers when it
does not fit.  The block traversal then reads the checkpoint one block at a time
(:func:`open_source`); a checkpoint whose layout transformers converts while loading (fused
experts, an old pickle) is loaded whole instead, and the log says so.  Pruned blocks are written
to the run's save folder, or to a working folder in the cache that is removed when the run ends
(:func:`working_folder`).  Zero-shot and activation runs load the whole model (:func:`whole_model`):
on the device when the plan says it fits, else offloaded by accelerate.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core import config
from core.engine import environment, models
from core.engine.checkpoint import CheckpointError, LazyModel
from core.engine.plan import GIB, MemoryPlan, Work, compute_dtype_for, gib
from core.engine.prune.runner import BlockSource, Resident
from core.runs import preflight

Say = Callable[[str], None]


class PlanRefused(ValueError):
    """The run's memory plan does not fit what is free when it starts; the message says why."""


@dataclass(frozen=True)
class Placement:
    """A run's model on this machine and the plan it follows."""

    folder: Path
    dtype: str  # the run's weight dtype ('auto' resolved)
    compute: str  # the dtype blocks are computed in
    plan: MemoryPlan
    device: str
    trust_remote_code: bool = False
    device_budget: int | None = None
    host_budget: int | None = None

    @property
    def store(self) -> str:
        """Where hidden states wait between blocks."""
        return self.device if self.plan.activations == "device" else "cpu"

    @property
    def token_store(self) -> tuple[str, torch.dtype] | None:
        """Where SparseLLM keeps its FFN data: (device, dtype) from the plan's 'device
        float32' / 'device bfloat16' / 'host float32'; None without such data."""
        if not self.plan.ffn_store:
            return None
        place, _, dtype = self.plan.ffn_store.partition(" ")
        return (self.device if place == "device" else "cpu", models.DTYPES[dtype])


def place(model: str, dtype: str, device: str, work: Work, say: Say,
          trust_remote_code: bool = False) -> Placement:
    """The model's local folder (a hub model is downloaded), its dtype, and the memory plan
    fitted to the free memory now; :class:`PlanRefused` when it does not fit."""
    folder = models.local_folder(model)
    resolved = models.resolve_dtype(folder, dtype)
    compute = compute_dtype_for(resolved, device, environment.native_bf16())
    if compute != resolved:
        say(f"{resolved} weights are computed in {compute} one block at a time: this CPU has "
            f"no native {resolved} arithmetic (weights are kept and saved in {resolved})")
    cfg, problems = preflight.load_config(str(folder), trust_remote_code)
    if cfg is None:
        raise models.ModelLoadError(" ".join(problems) or f"no config.json in {folder}")
    work = replace(work, dtype=resolved, compute_dtype=compute)
    device_budget, host_budget = preflight.budgets(device, at_start=True)
    plan, fits = preflight.fitted_plan(cfg, work, device_budget, host_budget)
    if not fits:
        raise PlanRefused(" ".join(preflight.memory_problems(
            plan, device, device_budget, host_budget, resolved, at_start=True)))
    say(plan.describe())
    return Placement(folder, resolved, compute, plan, device, trust_remote_code,
                     device_budget, host_budget)


def open_source(placed: Placement, folder: Path | None = None, say: Say | None = None
                ) -> LazyModel | Resident:
    """The checkpoint read one block at a time; loaded whole (said) where its layout cannot be
    read so."""
    folder = folder or placed.folder
    dtype = models.DTYPES[placed.dtype]
    try:
        return LazyModel(folder, dtype, models.DTYPES[placed.compute],
                         placed.trust_remote_code)
    except CheckpointError as exc:
        if say:
            say(f"{exc} The model is loaded whole instead (memory is not bounded by one "
                "block for it).")
        model, _ = models.load_model(str(folder), dtype=placed.compute, device="cpu",
                                      trust_remote_code=placed.trust_remote_code)
        return Resident(model)


@contextlib.contextmanager
def working_folder(save_dir: str | None, needed_bytes: int) -> Iterator[Path]:
    """Where the pruned checkpoint is written: the save folder, else a fresh folder in the
    cache, removed when the run ends.  Refused at once when its disk has no room for it."""
    if save_dir:
        target = Path(save_dir).expanduser()
        parent = target.parent
    else:
        parent = config.cache_dir() / "work"
        target = parent / f"run-{uuid.uuid4().hex[:12]}"
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed_bytes:
        raise OSError(f"Disk: the pruned model needs about {gib(needed_bytes)} in {parent}, "
                      f"which has {gib(free)} free; free some space"
                      + ("" if save_dir else " or set SPARSEBENCH_CACHE to a larger disk") + ".")
    try:
        yield target
    finally:
        if not save_dir:
            shutil.rmtree(target, ignore_errors=True)


def checkpoint_bytes(source: BlockSource, dtype: str) -> int:
    """The size of the source's checkpoint in ``dtype``."""
    per = torch.empty((), dtype=models.DTYPES[dtype]).element_size()
    return sum(p.numel() for p in source.model.parameters()) * per


@contextlib.contextmanager
def offload_folder() -> Iterator[Path]:
    """A fresh folder in the cache for accelerate's disk offload, removed afterwards."""
    folder = config.cache_dir() / "work" / f"offload-{uuid.uuid4().hex[:12]}"
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def whole_model(placed: Placement, folder: Path, say: Say, offload_dir: Path | None = None
                ) -> tuple[torch.nn.Module, Any]:
    """The whole model for lm-eval or CoreInfer: on the device, or offloaded by accelerate
    when the plan says it does not fit (``max_memory``: what the plan leaves the model; what
    the host cannot take goes to ``offload_dir``)."""
    dtype = models.DTYPES[placed.compute if placed.plan.on_cpu else placed.dtype]
    if placed.plan.zero_shot != "offloaded":
        say(f"the whole model is loaded on {placed.device} for evaluation")
        return models.load_for_evaluation(folder, dtype, placed.device,
                                          placed.trust_remote_code)
    phase = placed.plan.phase("zero-shot")
    on_device = phase.device.get("model", 0) if phase else 0
    index = int(placed.device.partition(":")[2] or 0)
    host = max((placed.host_budget or 0) - 2 * GIB, GIB)
    say(f"the whole model does not fit {placed.device} beside the evaluation: "
        f"{gib(on_device)} of it goes to the device, the rest to the host ({gib(host)} at most) "
        f"and then to {offload_dir}")
    return models.load_for_evaluation(folder, dtype, placed.device, placed.trust_remote_code,
                                      max_memory={index: on_device, "cpu": host},
                                      offload_dir=offload_dir)
