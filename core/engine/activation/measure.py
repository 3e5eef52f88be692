"""Measured CoreInfer sparsity: forward hooks on what the sparse FFN actually computed.

Every converted block routes its decode-time intermediate activations (the ``k`` kept neurons it
really computed, ``[batch, tokens, k]``) through a :class:`DecodeProbe`.  A forward hook on each
probe counts, per block, the decode tokens and the neurons computed for them, so the reported
kept fraction is read off the computed tensors, never copied from the ``sparsity`` parameter.

Pre-fill forwards run dense and compute every neuron; they are counted separately (how many, and
the share of neurons the selection kept), so a workload that never decodes (multiple-choice
loglikelihood, perplexity) reports ``decode_steps == 0`` and ``acted is False``.

:class:`FFNTimer` times FFN modules with hooks (the share of decode time spent in the FFN) for
``bench/decode_bench.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class DecodeProbe(nn.Module):
    """Identity on the computed intermediate activations ``[batch, tokens, k]``; hooks measure it.

    ``widths[b]`` is how many of the ``k`` columns are real neurons for sequence ``b`` (in a padded
    batch the rest are zero padding).  A Python list, so measuring never synchronises a GPU.
    """

    def forward(self, hidden: torch.Tensor, widths: list[int]) -> torch.Tensor:
        return hidden


@dataclass
class _BlockCounts:
    d_ffn: int
    decode_forwards: int = 0
    decode_tokens: int = 0
    kept_neuron_tokens: int = 0  # sum over decode tokens of neurons computed for that token
    prefills: int = 0
    prefill_sequences: int = 0
    selected_share_sum: float = 0.0  # sum over pre-filled sequences of kept/d_ffn


@dataclass
class CoreInferStats:
    """What CoreInfer did, measured.  Kept fraction = computed FFN neurons / d_ffn.

    Seed 003 calls the kept fraction "actual sparsity" (0.4 = 40% of the neurons computed).
    """

    blocks: list[int]
    n_blocks: int  # blocks in the model (converted or not)
    configured: dict[int, float]  # the kept-fraction parameter of each converted block
    decode_steps: int  # model forwards that ran the sparse FFN (generation steps)
    decode_tokens: int  # sequence-tokens computed sparse, per block
    prefill_forwards: int  # model forwards that ran dense and (re)selected the core neurons
    kept_per_block: dict[int, float | None]  # mean over decode tokens; None: never decoded
    kept_fraction: float | None  # mean over converted blocks
    kept_fraction_all_blocks: float | None  # unconverted blocks count as 1.0 (dense)
    selected_per_block: dict[int, float | None]  # mean share kept by the pre-fill selections
    selected_fraction: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def acted(self) -> bool:
        """True when at least one forward computed the FFN sparsely."""
        return self.decode_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks), "n_blocks": self.n_blocks,
            "configured": dict(self.configured), "decode_steps": self.decode_steps,
            "decode_tokens": self.decode_tokens, "prefill_forwards": self.prefill_forwards,
            "kept_per_block": dict(self.kept_per_block), "kept_fraction": self.kept_fraction,
            "kept_fraction_all_blocks": self.kept_fraction_all_blocks,
            "selected_per_block": dict(self.selected_per_block),
            "selected_fraction": self.selected_fraction, "acted": self.acted,
            "notes": list(self.notes),
        }

    def layer_stat_rows(self) -> list[dict[str, Any]]:
        """Rows in the shape of the store's layer statistics (block, layer, stat, value)."""
        rows: list[dict[str, Any]] = []
        for block in self.blocks:
            rows.append({"block": block, "layer": "ffn", "stat": "kept_fraction",
                         "value": self.kept_per_block[block]})
            rows.append({"block": block, "layer": "ffn", "stat": "selected_fraction",
                         "value": self.selected_per_block[block]})
            rows.append({"block": block, "layer": "ffn", "stat": "configured_fraction",
                         "value": self.configured[block]})
        rows.append({"block": None, "layer": "model", "stat": "kept_fraction",
                     "value": self.kept_fraction})
        return rows

    def metric_rows(self) -> list[dict[str, Any]]:
        """Rows for the store's metrics (kind 'activation'; 'actual_sparsity' is the measured
        kept fraction the dashboard shows, stored as missing when CoreInfer never acted)."""
        note = "; ".join(self.notes) or None
        return [
            {"kind": "activation", "dataset": "-", "metric": "actual_sparsity",
             "value": self.kept_fraction, "status": "ok" if self.acted else "missing",
             "note": note},
            {"kind": "activation", "dataset": "-", "metric": "selected_fraction",
             "value": self.selected_fraction,
             "status": "ok" if self.selected_fraction is not None else "missing"},
            {"kind": "activation", "dataset": "-", "metric": "decode_steps",
             "value": float(self.decode_steps)},
            {"kind": "activation", "dataset": "-", "metric": "decode_tokens",
             "value": float(self.decode_tokens)},
        ]


class DecodeMeter:
    """Per-block counters fed by hooks on the probes and by the pre-fill selections."""

    def __init__(self, blocks: dict[int, int], n_blocks: int, configured: dict[int, float]):
        self.counts = {b: _BlockCounts(d) for b, d in blocks.items()}
        self.n_blocks = n_blocks
        self.configured = dict(configured)
        self.decode_steps = 0
        self.prefill_forwards = 0

    def attach(self, probe: DecodeProbe, block: int) -> torch.utils.hooks.RemovableHandle:
        def hook(_module: nn.Module, args: tuple, _out: Any) -> None:
            counts = self.counts[block]  # looked up per call: reset() replaces the counters
            hidden, widths = args[0], args[1]
            if hidden.dim() != 3 or hidden.shape[0] != len(widths):
                raise RuntimeError(f"DecodeProbe expects [batch, tokens, k] and one width per "
                                   f"sequence; got {tuple(hidden.shape)} and {len(widths)}")
            tokens_per_seq = hidden.shape[1]
            if max(widths, default=0) > hidden.shape[-1]:
                raise RuntimeError("DecodeProbe: a width exceeds the computed columns")
            counts.decode_forwards += 1
            counts.decode_tokens += tokens_per_seq * len(widths)
            counts.kept_neuron_tokens += tokens_per_seq * sum(widths)

        return probe.register_forward_hook(hook)

    def on_selection(self, block: int, sizes: Iterable[int]) -> None:
        counts = self.counts[block]
        counts.prefills += 1
        for size in sizes:
            counts.prefill_sequences += 1
            counts.selected_share_sum += size / counts.d_ffn

    def reset(self) -> None:
        for block, counts in self.counts.items():
            self.counts[block] = _BlockCounts(counts.d_ffn)
        self.decode_steps = 0
        self.prefill_forwards = 0

    def stats(self) -> CoreInferStats:
        kept: dict[int, float | None] = {}
        selected: dict[int, float | None] = {}
        for block, c in self.counts.items():
            kept[block] = (c.kept_neuron_tokens / (c.decode_tokens * c.d_ffn)
                           if c.decode_tokens else None)
            selected[block] = (c.selected_share_sum / c.prefill_sequences
                               if c.prefill_sequences else None)
        measured = [v for v in kept.values() if v is not None]
        kept_mean = statistics.fmean(measured) if measured else None
        chosen = [v for v in selected.values() if v is not None]
        decode_tokens = max((c.decode_tokens for c in self.counts.values()), default=0)
        notes = []
        if not decode_tokens:
            notes.append("no decode steps: every forward was a dense pre-fill, so CoreInfer did "
                         "not act (the scores are the dense model's)")
        elif len(measured) < len(kept):
            notes.append("some converted blocks never ran a sparse forward")
        return CoreInferStats(
            blocks=list(self.counts), n_blocks=self.n_blocks, configured=dict(self.configured),
            decode_steps=self.decode_steps, decode_tokens=decode_tokens,
            prefill_forwards=self.prefill_forwards, kept_per_block=kept, kept_fraction=kept_mean,
            kept_fraction_all_blocks=(
                (sum(measured) + (self.n_blocks - len(self.counts)))
                / (len(measured) + self.n_blocks - len(self.counts))
                if measured else None),
            selected_per_block=selected,
            selected_fraction=statistics.fmean(chosen) if chosen else None,
            notes=notes,
        )


class FFNTimer:
    """Wall time spent inside the given modules (e.g. every block's MLP), measured with hooks.

    On CUDA each hook synchronises the device, which slows the run a little: time the whole
    generation separately (without the timer) for tokens per second.
    """

    def __init__(self, modules: Iterable[nn.Module]):
        self.modules = list(modules)
        self.seconds = 0.0
        self.calls = 0
        self._handles: list[Any] = []
        self._started: dict[int, float] = {}

    def _sync(self, module: nn.Module) -> None:
        param = next(module.parameters(), None)
        if param is not None and param.is_cuda:
            torch.cuda.synchronize(param.device)

    def __enter__(self) -> FFNTimer:
        for module in self.modules:
            def pre(mod: nn.Module, _args: tuple) -> None:
                self._sync(mod)
                self._started[id(mod)] = time.perf_counter()

            def post(mod: nn.Module, _args: tuple, _out: Any) -> None:
                self._sync(mod)
                self.seconds += time.perf_counter() - self._started.pop(id(mod))
                self.calls += 1

            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
