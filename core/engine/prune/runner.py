"""The layer-by-layer traversal shared by every weight-pruning method, OWL and perplexity.

1. Run the model up to decoder block 0 on the windows and keep the block's inputs (hidden
   states plus whatever the block needs: attention mask, position ids or embeddings).
2. ``prepare``: the method's target for every block (OWL walks the dense blocks once for it).
3. For each block: bring it to the compute device, run it once densely with hooks that feed
   every linear's inputs to the method's collectors, let the method prune the block, run it
   again so the next block sees the pruned model's activations (written over its inputs), and
   give it back.

A :class:`Traversal` walks the blocks of a *source*: a model held in memory (:class:`Resident`)
or one read from its files a block at a time (``core.engine.checkpoint.LazyModel``).  Either way
one decoder block is on the compute device at a time; with a lazy source, one block is in memory
at all.  Where the windows' hidden states are kept (``store``) is the caller's choice: on the
compute device, or on the host (pinned when a GPU computes) and moved per window.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from core.engine.adapters import Adapter, get_adapter, weight_matrix
from core.engine.environment import free_device_cache
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


# -- sources of blocks -----------------------------------------------------------------------------
class BlockSource(Protocol):
    """Where the traversal gets its blocks: ``block`` lends one on a device (``None``: where it
    is), ``outside`` the modules around the blocks (embeddings, final norm, head)."""

    model: nn.Module
    adapter: Adapter

    @property
    def n_blocks(self) -> int: ...

    def block(self, index: int, device: torch.device | str | None,
              write: bool = False) -> contextlib.AbstractContextManager[nn.Module]: ...

    def outside(self, device: torch.device | str) -> contextlib.AbstractContextManager[
        nn.Module]: ...

    def settle(self, index: int) -> None:
        """Round a block's changed weights to the dtype they are kept in (before the next
        block is computed from them)."""


class Resident:
    """A model held whole in memory: a block visits the compute device for its turn."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter = get_adapter(model)

    @property
    def n_blocks(self) -> int:
        return len(self.adapter.blocks(self.model))

    def settle(self, index: int) -> None:
        """Nothing: a model in memory computes in the dtype it keeps."""

    @contextlib.contextmanager
    def block(self, index: int, device: torch.device | str | None,
              write: bool = False) -> Iterator[nn.Module]:
        block = self.adapter.blocks(self.model)[index]
        home = next(block.parameters()).device
        if device is not None:
            block.to(device)
        try:
            yield block
        finally:
            block.to(home)
            free_device_cache()

    @contextlib.contextmanager
    def outside(self, device: torch.device | str) -> Iterator[nn.Module]:
        home = next(self.model.parameters()).device
        _move_outside_blocks(self.model, self.adapter.blocks_path, device)
        try:
            yield self.model
        finally:
            _move_outside_blocks(self.model, self.adapter.blocks_path, home)


def as_source(model: nn.Module | BlockSource) -> BlockSource:
    """A block source: the model itself when it is one, else the model held in memory."""
    return model if hasattr(model, "outside") else Resident(model)  # type: ignore[return-value]


def _move_outside_blocks(model: nn.Module, blocks_path: str, device: torch.device | str) -> None:
    """Move every parameter and buffer not inside the decoder blocks to ``device``."""
    for name, module in model.named_modules():
        if name == blocks_path or name.startswith(blocks_path + "."):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(device)
        for key, buf in module.named_buffers(recurse=False):
            module._buffers[key] = buf.to(device)


# -- block 0's inputs ------------------------------------------------------------------------------
class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """What block 0 received for each batch of windows: hidden states (kept on ``store``),
    and the other arguments (on the compute device; equal ones shared between batches)."""

    hidden: list[torch.Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    store: torch.device | str = "cpu"


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def _shared(value: Any, earlier: Any) -> Any:
    """``earlier`` when it equals ``value`` (tensors of equal shape and contents), so batches
    share one copy of their position embeddings and masks; else ``value``."""
    if isinstance(value, torch.Tensor) and isinstance(earlier, torch.Tensor):
        same = (value.shape == earlier.shape and value.dtype == earlier.dtype
                and value.device == earlier.device and torch.equal(value, earlier))
        return earlier if same else value
    if isinstance(value, tuple) and isinstance(earlier, tuple) and len(value) == len(earlier):
        return tuple(_shared(v, e) for v, e in zip(value, earlier, strict=True))
    return value


def _to_store(hidden: torch.Tensor, store: torch.device | str) -> torch.Tensor:
    moved = hidden.detach().to(store)
    if moved.device.type == "cpu" and hidden.device.type == "cuda":
        moved = moved.pin_memory()
    return moved


def capture_inputs(source: nn.Module | BlockSource, rows: torch.Tensor,
                   device: torch.device | str, batch_size: int = 1,
                   store: torch.device | str | None = None) -> BlockInputs:
    """Run the model up to block 0 on ``rows`` (token ids ``[n, seqlen]``), ``batch_size`` rows
    at a time, and record the block's inputs; hidden states are kept on ``store`` (default: the
    compute device)."""
    source = as_source(source)
    store = device if store is None else store
    captured = BlockInputs([], [], [], store)

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        earlier_a = captured.args[-1] if captured.args else ()
        earlier_k = captured.kwargs[-1] if captured.kwargs else {}
        captured.hidden.append(_to_store(hidden, store))
        captured.args.append(tuple(_shared(_detach(a), e) for a, e in
                                   zip(args[1:], earlier_a or (None,) * len(args[1:]),
                                       strict=True)))
        captured.kwargs.append({k: _shared(_detach(v), earlier_k.get(k))
                                for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    with source.outside(device) as model:
        handle = source.adapter.blocks(model)[0].register_forward_pre_hook(catch,
                                                                           with_kwargs=True)
        try:
            for start in range(0, rows.shape[0], batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=rows[start:start + batch_size].to(device), use_cache=False)
        finally:
            handle.remove()
    return captured


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


# -- pruning ---------------------------------------------------------------------------------------
@torch.no_grad()
def prune_model(
    model: nn.Module | BlockSource,
    method: PruningMethod,
    target: Target,
    calibration: torch.Tensor | None,
    device: torch.device | str = "cpu",
    block_range: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    block_targets: Sequence[Target | float] | None = None,
    store: torch.device | str | None = None,
) -> PruneReport:
    """Prune ``model`` (in memory, or a lazy source whose writer takes the pruned blocks) with
    ``method`` and return the measured sparsity.

    The method's lifecycle, in this order: ``prepare`` (one target per block: uniform, or OWL's
    from a dense walk), then per block ``block_collectors`` fed during one dense pass and
    ``prune_block``.  ``calibration`` is ``[samples, seqlen]`` token ids (unused by data-free
    methods).  Blocks outside ``block_range`` (start inclusive, end exclusive) stay dense.  A
    target of 0 changes nothing at all.  ``block_targets`` (one per decoder block) replaces the
    method's ``prepare``; a block whose target is 0 stays dense.  ``store``: where the
    calibration windows' hidden states are kept (default: the compute device)."""
    source = as_source(model)
    start, end = _checked_range(block_range, source.n_blocks)
    given = _per_block_targets(target, block_targets, source.n_blocks)
    traversal = Traversal(source, device, calibration if method.needs_data else None,
                          progress, store=store)
    if not any(t.fraction > 0 for t in given[start:end]):
        return traversal.measure_rest(PruneReport())
    if method.needs_data and (calibration is None or calibration.numel() == 0):
        raise ValueError(f"{method.name} needs calibration data")
    targets = given if block_targets is not None else _per_block_targets(
        target, method.prepare(traversal, target, (start, end)), source.n_blocks)
    report = PruneReport(block_targets=[t.fraction for t in targets])

    def prune_one(index: int, block: nn.Module, inputs: BlockInputs | None) -> None:
        if start <= index < end and targets[index].fraction > 0:
            stats = traversal.collect(block, method, inputs) if inputs is not None else {}
            note = method.prune_block(block, source.adapter, stats, targets[index])
            if note:
                report.notes[index] = note
        report.linears += measure_block(index, block, source.adapter)

    traversal.walk(prune_one, first=0 if traversal.calibration is not None else start,
                   last=end, write=True)
    traversal.measure_rest(report)
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


def measure_block(index: int, block: nn.Module, adapter: Adapter) -> list[LinearSparsity]:
    """The measured share of zero weights of every prunable linear of one block."""
    return [LinearSparsity(index, name, int((weight_matrix(module) == 0).sum()),
                           weight_matrix(module).numel())
            for name, module in adapter.linears(block).items()]


# -- the traversal ---------------------------------------------------------------------------------
@dataclass
class Traversal:
    """The one walk over the decoder blocks, shared by every weight-pruning method, OWL and
    perplexity.

    ``calibration`` (token ids ``[n, seqlen]``) is captured as block 0's inputs when a walk
    needs them, ``batch_size`` rows at a time; a walk uses them up (each block's outputs are
    written over its inputs), so the next walk captures again."""

    source: BlockSource
    device: torch.device | str
    calibration: torch.Tensor | None
    progress: ProgressFn | None = None
    batch_size: int = 1
    store: torch.device | str | None = None
    visited: set[int] = field(default_factory=set)
    captures: int = 0

    @property
    def model(self) -> nn.Module:
        return self.source.model

    @property
    def adapter(self) -> Adapter:
        return self.source.adapter

    def capture(self) -> BlockInputs | None:
        """Block 0's inputs on the calibration rows (None without calibration); a capture
        after the first (OWL's walk used them up) counts as part of its walk."""
        if self.calibration is None:
            return None
        if self.progress and not self.captures:
            self.progress("capturing block inputs", 0, 1)
        self.captures += 1
        return capture_inputs(self.source, self.calibration, self.device, self.batch_size,
                              self.store)

    def walk(self, visit: Callable[[int, nn.Module, BlockInputs | None], None] | None,
             first: int = 0, last: int | None = None, stage: str = "pruning",
             write: bool = False, through_last: bool = False) -> BlockInputs | None:
        """For blocks ``first`` .. ``last`` - 1, on the device: ``visit(index, block, inputs)``,
        then (with calibration) run the block to give the next one its inputs.  ``write``
        hands each visited block to the source's writer; ``through_last`` also runs the last
        block and returns its outputs (else None)."""
        last = self.source.n_blocks if last is None else last
        inputs = self.capture()
        if self.progress:
            self.progress(stage, 0, last - first)
        for index in range(first, last):
            with self.source.block(index, self.device, write=write) as block:
                if visit is not None:
                    visit(index, block, inputs)
                    self.source.settle(index)  # the next block sees the weights as written
                if inputs is not None and (index + 1 < last or through_last):
                    self.forward(block, inputs)
            if write:
                self.visited.add(index)
            if self.progress:
                self.progress(stage, index + 1 - first, last - first)
        return inputs if through_last else None

    def forward(self, block: nn.Module, inputs: BlockInputs) -> None:
        """Run ``block`` on every batch, each output written over its input."""
        for j, (h, a, k) in enumerate(zip(inputs.hidden, inputs.args, inputs.kwargs,
                                          strict=True)):
            out = _block_output(block(h.to(self.device, non_blocking=True), *a, **k))
            inputs.hidden[j] = out if h.device == out.device else _to_store(out, inputs.store)

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
                block(h.to(self.device, non_blocking=True), *a, **k)
        finally:
            for handle in handles:
                handle.remove()
        return stats

    def measure_rest(self, report: PruneReport) -> PruneReport:
        """Add the measured sparsity of the blocks no pruning walk visited (handing them to a
        lazy source's writer as they are), in block order."""
        for index in range(self.source.n_blocks):
            if index not in self.visited:
                with self.source.block(index, None, write=True) as block:
                    report.linears += measure_block(index, block, self.adapter)
        report.linears.sort(key=lambda lin: lin.block)
        return report


def _feeder(collector: Collector) -> Callable[[nn.Module, tuple, Any], None]:
    """A forward hook that gives one linear's inputs [tokens, in] to ``collector``."""
    def hook(_module: nn.Module, args: tuple, out: Any) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        if collector.wants_output:
            collector.add_batch(x, outputs=out.reshape(-1, out.shape[-1]))
        else:
            collector.add_batch(x)
    return hook
