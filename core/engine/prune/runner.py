"""The layer-by-layer calibration runner shared by every weight-pruning method.

1. Run the model up to decoder block 0 on the calibration windows and keep the block's inputs
   (hidden states plus whatever the block needs: attention mask, position ids or embeddings).
2. ``prepare``: the method's target for every block (OWL walks the dense blocks once for it).
3. For each block: move it to the compute device, run it once densely with hooks that feed every
   linear's inputs to the method's collectors, let the method prune the block, run it again so
   the next block sees the pruned model's activations, move it back.

Steps 2 and 3 walk the blocks with the one :class:`Traversal`.  Only one decoder block is on the
compute device at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.engine.adapters import Adapter, get_adapter, weight_matrix
from core.engine.prune.methods.base import Collector, PruningMethod, Target

log = logging.getLogger(__name__)

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
    #: The target each block was pruned to (OWL: its own; 0: left dense).
    block_targets: list[float] = field(default_factory=list)
    #: What a method noted while pruning a block (SparseLLM: its FFN errors), by block.
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Each distinct warning the method noted for its blocks, in block order."""
        return list(dict.fromkeys(n["warning"] for n in self.notes.values() if "warning" in n))

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

    The method's lifecycle, in this order: ``prepare`` (one target per block: uniform, or OWL's
    from a dense walk), then per block ``block_collectors`` fed during one dense pass and
    ``prune_block``.  ``calibration`` is ``[samples, seqlen]`` token ids (unused by data-free
    methods).  Blocks outside ``block_range`` (start inclusive, end exclusive) stay dense.  A
    target of 0 changes nothing at all.  ``block_targets`` (one per decoder block) replaces the
    method's ``prepare``; a block whose target is 0 stays dense.
    """
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    start, end = _checked_range(block_range, len(blocks))
    given = _per_block_targets(target, block_targets, len(blocks))
    if not any(t.fraction > 0 for t in given[start:end]):
        return _measure_sparsity(blocks, adapter)
    if method.needs_data and (calibration is None or calibration.numel() == 0):
        raise ValueError(f"{method.name} needs calibration data")
    traversal = Traversal.start(model, adapter, calibration if method.needs_data else None,
                                device, progress)
    targets = given if block_targets is not None else _per_block_targets(
        target, method.prepare(traversal, target, (start, end)), len(blocks))
    notes: dict[int, dict[str, Any]] = {}

    def prune_one(index: int, block: nn.Module, inputs: BlockInputs | None) -> None:
        if start <= index < end and targets[index].fraction > 0:
            stats = traversal.collect(block, method, inputs) if inputs is not None else {}
            notes[index] = method.prune_block(block, adapter, stats, targets[index]) or {}

    traversal.walk(prune_one, first=0 if traversal.inputs is not None else start, last=end,
                   consume=True)
    report = _measure_sparsity(blocks, adapter)
    report.block_targets = [t.fraction for t in targets]
    report.notes = {index: note for index, note in notes.items() if note}
    for text in report.warnings:
        log.warning(text)
    return report


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


def _measure_sparsity(blocks: Sequence[nn.Module], adapter: Adapter) -> PruneReport:
    """The measured share of zero weights of every prunable linear of ``blocks``."""
    report = PruneReport()
    for index, block in enumerate(blocks):
        for name, module in adapter.linears(block).items():
            w = weight_matrix(module)
            report.linears.append(LinearSparsity(index, name, int((w == 0).sum()), w.numel()))
    return report


@dataclass
class Traversal:
    """The one walk over the decoder blocks, shared by every weight-pruning method and OWL.

    ``start`` captures block 0's inputs on the calibration windows (the modules outside the
    blocks are on the compute device for the capture only).  ``walk`` then takes each block to
    the device, lets a visitor work on it, and runs it to give the next block its inputs."""

    model: nn.Module
    adapter: Adapter
    device: torch.device | str
    inputs: BlockInputs | None
    progress: ProgressFn | None = None

    @classmethod
    def start(cls, model: nn.Module, adapter: Adapter, calibration: torch.Tensor | None,
              device: torch.device | str, progress: ProgressFn | None = None) -> Traversal:
        """A traversal of ``model``; with ``calibration``, block 0's inputs are captured."""
        if calibration is None:
            return cls(model, adapter, device, None, progress)
        home = next(model.parameters()).device
        _move_outside_blocks(model, adapter.blocks_path, device)
        if progress:
            progress("capturing block inputs", 0, 1)
        try:
            return cls(model, adapter, device, capture_inputs(model, adapter, calibration, device),
                       progress)
        finally:  # embeddings, final norm and head go back where they were
            _move_outside_blocks(model, adapter.blocks_path, home)

    def walk(self, visit: Callable[[int, nn.Module, BlockInputs | None], None], first: int = 0,
             last: int | None = None, consume: bool = False, stage: str = "pruning") -> None:
        """For blocks ``first`` .. ``last`` - 1, on the device: ``visit(index, block, inputs)``,
        then (with captured inputs) replace the inputs by the block's outputs for the next one;
        progress is reported as ``stage``.  Each walk starts from block 0's captured inputs;
        ``consume`` lets this one use them up (the last walk: memory is freed block by block)."""
        blocks = self.adapter.blocks(self.model)
        last = len(blocks) if last is None else last
        inputs = self.inputs if consume or self.inputs is None else BlockInputs(
            list(self.inputs.hidden), self.inputs.args, self.inputs.kwargs)
        if self.progress:
            self.progress(stage, 0, last - first)
        for index in range(first, last):
            block = blocks[index]
            home = next(block.parameters()).device
            block.to(self.device)
            try:
                visit(index, block, inputs)
                if inputs is not None and index + 1 < last:
                    inputs.hidden = [_block_output(block(h, *a, **k)) for h, a, k in
                                     zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True)]
            finally:
                block.to(home)
            if self.progress:
                self.progress(stage, index + 1 - first, last - first)

    def collect(self, block: nn.Module, method: PruningMethod,
                inputs: BlockInputs) -> dict[str, Collector]:
        """One dense pass of ``block`` with hooks that feed each linear's inputs (and, for a
        collector that ``wants_output``, its outputs) to the method's collectors."""
        stats = method.block_collectors(block, self.adapter)
        handles = []
        for name, module in self.adapter.linears(block).items():
            collector = stats.get(name)
            if collector is not None:
                handles.append(module.register_forward_hook(_feeder(collector)))
        try:
            for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
                block(h, *a, **k)
        finally:
            for handle in handles:
                handle.remove()
        return stats


def _feeder(collector: Collector) -> Callable[[nn.Module, tuple, Any], None]:
    """A forward hook that gives one linear's inputs [tokens, in] to ``collector``."""
    def hook(_module: nn.Module, args: tuple, out: Any) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        if collector.wants_output:
            collector.add_batch(x, outputs=out.reshape(-1, out.shape[-1]))
        else:
            collector.add_batch(x)
    return hook
