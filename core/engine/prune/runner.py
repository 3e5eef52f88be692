"""The layer-by-layer calibration runner shared by every weight-pruning method.

1. Run the model up to decoder block 0 on the calibration windows and keep the block's inputs
   (hidden states plus whatever the block needs: attention mask, position ids or embeddings).
2. For each block: move it to the compute device, run it once densely with hooks that feed every
   linear's inputs to the method's collectors, let the method prune the block, run it again so
   the next block sees the pruned model's activations, move it back.

Only one decoder block is on the compute device at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.engine.adapters import Adapter, get_adapter, weight_matrix
from core.engine.prune.methods.base import PruningMethod, Target

#: progress(stage, done, total) -- may raise to cancel the run.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class LinearSparsity:
    block: int
    name: str
    zeros: int
    numel: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class PruneReport:
    """Measured sparsity of every prunable linear after pruning."""

    linears: list[LinearSparsity] = field(default_factory=list)

    def per_block(self) -> dict[int, float]:
        totals: dict[int, list[int]] = {}
        for lin in self.linears:
            zeros, numel = totals.setdefault(lin.block, [0, 0])
            totals[lin.block] = [zeros + lin.zeros, numel + lin.numel]
        return {b: z / n for b, (z, n) in sorted(totals.items())}

    @property
    def overall(self) -> float:
        numel = sum(lin.numel for lin in self.linears)
        return sum(lin.zeros for lin in self.linears) / numel if numel else 0.0


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """What block 0 received for each calibration window."""

    hidden: list[torch.Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def _move_outside_blocks(model: nn.Module, blocks_path: str, device: torch.device | str) -> None:
    """Move every parameter and buffer not inside the decoder blocks to ``device``."""
    for name, module in model.named_modules():
        if name == blocks_path or name.startswith(blocks_path + "."):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(device)
        for key, buf in module.named_buffers(recurse=False):
            module._buffers[key] = buf.to(device)


def capture_inputs(model: nn.Module, adapter: Adapter, calibration: torch.Tensor,
                   device: torch.device | str) -> BlockInputs:
    """Run the model up to block 0 on each calibration window and record the block's inputs."""
    blocks = adapter.blocks(model)
    captured = BlockInputs([], [], [])

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.args.append(tuple(_detach(a) for a in args[1:]))
        captured.kwargs.append({k: _detach(v) for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    first = blocks[0]
    first_device = next(first.parameters()).device
    first.to(device)
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for row in calibration:
            with contextlib.suppress(_StopForward):
                model(input_ids=row.unsqueeze(0).to(device), use_cache=False)
    finally:
        handle.remove()
        first.to(first_device)
    return captured


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: PruningMethod,
    target: Target,
    calibration: torch.Tensor | None,
    device: torch.device | str = "cpu",
    block_range: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    block_targets: Sequence[Target | float] | None = None,
) -> PruneReport:
    """Prune ``model`` in place with ``method`` and return the measured sparsity.

    ``calibration`` is ``[samples, seqlen]`` token ids (unused by data-free methods).  Blocks
    outside ``block_range`` (start inclusive, end exclusive) stay dense.  A target of 0 changes
    nothing at all.  ``block_targets`` (one per decoder block, e.g. from ``core.owl``) replaces
    ``target`` block by block; a block whose target is 0 stays dense.
    """
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    start, end = _checked_range(block_range, len(blocks))
    targets = _per_block_targets(target, block_targets, len(blocks))
    prune_now = any(t.fraction > 0 for t in targets[start:end])
    needs_data = prune_now and method.needs_calibration
    if needs_data and (calibration is None or calibration.numel() == 0):
        raise ValueError(f"{method.name} needs calibration data")

    inputs = None
    if needs_data:
        inputs = _capture_on_device(model, adapter, calibration, device, progress, len(blocks))

    last = end if needs_data else len(blocks)
    for index in range(last):
        prune = start <= index < end and targets[index].fraction > 0
        _process_block(blocks[index], adapter, method, targets[index] if prune else None,
                       inputs, device, propagate=index + 1 < last)
        if progress:
            progress("pruning", index + 1, last)
    return _measure_sparsity(blocks, adapter)


def _checked_range(block_range: tuple[int, int] | None, n_blocks: int) -> tuple[int, int]:
    """``block_range`` (default: every block), checked against the model's ``n_blocks``."""
    start, end = block_range or (0, n_blocks)
    if not 0 <= start < end <= n_blocks:
        raise ValueError(f"block range {start}..{end} is outside the model's {n_blocks} blocks")
    return start, end


def _per_block_targets(target: Target, block_targets: Sequence[Target | float] | None,
                       n_blocks: int) -> list[Target]:
    """One target per decoder block: ``block_targets`` parsed, or ``target`` for every block."""
    if block_targets is None:
        return [target] * n_blocks
    targets = [t if isinstance(t, Target) else Target.parse(t) for t in block_targets]
    if len(targets) != n_blocks:
        raise ValueError(f"block_targets has {len(targets)} entries; the model has "
                         f"{n_blocks} decoder blocks (one target per block)")
    return targets


def _capture_on_device(model: nn.Module, adapter: Adapter, calibration: torch.Tensor,
                       device: torch.device | str, progress: ProgressFn | None,
                       n_blocks: int) -> BlockInputs:
    """Block 0's inputs, captured with everything outside the blocks moved to ``device`` for
    the time of the capture."""
    home = next(model.parameters()).device
    _move_outside_blocks(model, adapter.blocks_path, device)
    if progress:
        progress("capturing block inputs", 0, n_blocks)
    try:
        return capture_inputs(model, adapter, calibration, device)
    finally:  # embeddings, final norm and head go back where they were
        _move_outside_blocks(model, adapter.blocks_path, home)


def _process_block(block: nn.Module, adapter: Adapter, method: PruningMethod,
                   target: Target | None, inputs: BlockInputs | None,
                   device: torch.device | str, propagate: bool) -> None:
    """On ``device``: prune ``block`` to ``target`` (None: leave it dense) from its collected
    inputs, then, if ``propagate``, run the pruned block to give the next block its inputs."""
    home = next(block.parameters()).device
    block.to(device)
    if target is not None:
        stats = _collect(block, adapter, method, inputs) if inputs is not None else {}
        method.prune_block(block, adapter, stats, target)
        del stats
    if inputs is not None and propagate:
        inputs.hidden = [_block_output(block(h, *a, **k))
                         for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs,
                                            strict=True)]
    block.to(home)


def _measure_sparsity(blocks: Sequence[nn.Module], adapter: Adapter) -> PruneReport:
    """The measured share of zero weights of every prunable linear of ``blocks``."""
    report = PruneReport()
    for index, block in enumerate(blocks):
        for name, module in adapter.linears(block).items():
            w = weight_matrix(module)
            report.linears.append(LinearSparsity(index, name, int((w == 0).sum()), w.numel()))
    return report


def _collect(block: nn.Module, adapter: Adapter, method: PruningMethod,
             inputs: BlockInputs | None) -> dict[str, Any]:
    """One dense pass of the block with hooks that feed each linear's inputs to its collector.

    A method may build all of a block's collectors at once with ``block_collectors(block,
    adapter)`` (a joint method needs to know which linear is which); a collector whose
    ``wants_output`` is true also receives the linear's output: ``add_batch(inputs, outputs=...)``.
    """
    linears = adapter.linears(block)
    make_all = getattr(method, "block_collectors", None)
    if make_all is not None:
        stats = make_all(block, adapter)
    else:
        stats = {name: method.collector(module) for name, module in linears.items()}
    handles = []
    for name, module in linears.items():
        collector = stats.get(name)
        if collector is None:
            continue

        def hook(_m: nn.Module, args: tuple, out: Any, collector=collector) -> None:
            x = args[0]
            if getattr(collector, "wants_output", False):
                collector.add_batch(x.reshape(-1, x.shape[-1]),
                                    outputs=out.reshape(-1, out.shape[-1]))
            else:
                collector.add_batch(x.reshape(-1, x.shape[-1]))

        handles.append(module.register_forward_hook(hook))
    try:
        assert inputs is not None
        for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            block(h, *a, **k)
    finally:
        for handle in handles:
            handle.remove()
    return stats
