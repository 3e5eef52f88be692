"""Perplexity with the Wanda / SparseGPT protocol.

The evaluation text is tokenized once and cut into non-overlapping windows of ``seqlen`` tokens
(the tail is dropped); PPL = exp(sum of per-window mean NLL x seqlen / (windows x seqlen)).  The
loss is computed in fp32.  :func:`perplexity` runs the whole model on each batch of windows;
:func:`blockwise_perplexity` walks the decoder blocks instead, as SparseGPT's ``llama_eval``
does: every window's hidden states are carried from block to block (one block in memory), then
the final norm and head give each batch's logits, freed batch by batch.  Both run under
``torch.inference_mode``.  A non-finite result is reported as diverged, not as a number; a
finite one at or above the vocabulary size is *collapsed* (:func:`is_collapsed`): worse than
guessing uniformly over the vocabulary, whose perplexity is exactly the vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.prune.runner import BlockSource, Traversal, as_source


@dataclass(frozen=True)
class PerplexityResult:
    value: float | None  # None when diverged
    windows: int
    seqlen: int
    nll_sum: float
    window_nlls: tuple[float, ...] = ()  # each window's mean NLL, in window order

    @property
    def diverged(self) -> bool:
        return self.value is None

    @property
    def tokens(self) -> int:
        return self.windows * self.seqlen


def is_collapsed(value: float | None, vocab_size: int | None) -> bool:
    """True when a finite perplexity is at or above the vocabulary size: no better than uniform
    guessing over the vocabulary (PPL = vocabulary size).  False for a diverged (None or
    non-finite) value and when the vocabulary size is unknown (None or < 1)."""
    if value is None or not math.isfinite(value) or vocab_size is None or vocab_size < 1:
        return False
    return value >= vocab_size


def vocab_size(model: nn.Module) -> int | None:
    """The number of tokens a Hugging Face causal LM predicts over: the rows of its output
    embedding, else ``config.vocab_size``; None when neither is known."""
    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear | nn.Embedding):
        return int(head.weight.shape[0])
    size = getattr(model.config, "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[n, seqlen]`` of a 1-D token tensor (tail dropped)."""
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"The evaluation text has {ids.numel()} tokens: fewer than one window of "
                         f"{seqlen}.")
    return ids[: count * seqlen].reshape(count, seqlen)


def window_nlls(logits: torch.Tensor, batch: torch.Tensor) -> list[float]:
    """Each window's mean NLL over its seqlen - 1 predicted tokens, as in the papers' batch-1
    loop.  ``logits[i, :-1]`` is a view of contiguous memory, so nothing is copied for an fp32
    model; a half-precision model's logits are cast to fp32 one window at a time."""
    losses = [F.cross_entropy(logits[i, :-1].float(), batch[i, 1:])
              for i in range(batch.shape[0])]
    return torch.stack(losses).tolist()


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    seqlen: int,
    batch_size: int = 1,
    max_windows: int | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on 1-D token ids, in batches of ``batch_size`` windows."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    chunks = windows(ids, seqlen, max_windows)
    nlls: list[float] = []
    if progress:
        progress("perplexity", 0, chunks.shape[0])
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start: start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        nlls.extend(window_nlls(logits, batch))
        del logits
        if progress:
            progress("perplexity", min(start + batch_size, chunks.shape[0]), chunks.shape[0])
    return _result(nlls, seqlen)


def _result(nlls: list[float], seqlen: int) -> PerplexityResult:
    nll_sum = math.fsum(nll * seqlen for nll in nlls)
    mean_nll = nll_sum / (len(nlls) * seqlen)
    value = math.exp(mean_nll) if math.isfinite(mean_nll) and mean_nll < 700 else None
    return PerplexityResult(value, len(nlls), seqlen, nll_sum, tuple(nlls))


@torch.inference_mode()
def blockwise_perplexity(
    source: nn.Module | BlockSource,
    ids: torch.Tensor,
    seqlen: int,
    batch_size: int = 1,
    max_windows: int | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    store: torch.device | str | None = None,
) -> PerplexityResult:
    """:func:`perplexity` walking the decoder blocks of ``source`` (a model in memory, or one
    read from its files a block at a time): the same numbers as the whole model's forward.
    Progress counts the blocks and then the head as one more step; ``store`` is where the
    windows' hidden states wait between blocks (default: the compute device)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    source = as_source(source)
    chunks = windows(ids, seqlen, max_windows)
    steps = source.n_blocks + 1

    def blocks_done(_stage: str, done: int, _total: int) -> None:
        if progress:
            progress("perplexity", done, steps)

    walk = Traversal(source, device, chunks, blocks_done, batch_size, store)
    inputs = walk.walk(None, stage="perplexity", through_last=True)
    assert inputs is not None
    nlls: list[float] = []
    with source.outside(device) as model:
        last = [*source.adapter.final_modules(model), model.get_output_embeddings()]
        for j, start in enumerate(range(0, chunks.shape[0], batch_size)):
            hidden = inputs.hidden[j].to(device)
            inputs.hidden[j] = hidden[:0]  # free the batch's hidden states as it is scored
            for module in last:
                hidden = module(hidden)
            nlls.extend(window_nlls(hidden, chunks[start: start + batch_size].to(device)))
            del hidden
    if progress:
        progress("perplexity", steps, steps)
    return _result(nlls, seqlen)
