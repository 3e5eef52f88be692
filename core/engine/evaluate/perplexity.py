"""Perplexity with the Wanda / SparseGPT protocol.

The evaluation text is tokenized once and cut into non-overlapping windows of ``seqlen`` tokens
(the tail is dropped); PPL = exp(sum of per-window mean NLL x seqlen / (windows x seqlen)).  The
loss is computed in fp32.  A non-finite result is reported as diverged, not as a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PerplexityResult:
    value: float | None  # None when diverged
    windows: int
    seqlen: int
    nll_sum: float

    @property
    def diverged(self) -> bool:
        return self.value is None

    @property
    def tokens(self) -> int:
        return self.windows * self.seqlen


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[n, seqlen]`` of a 1-D token tensor (tail dropped)."""
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"The evaluation text has {ids.numel()} tokens: fewer than one window of "
                         f"{seqlen}.")
    return ids[: count * seqlen].reshape(count, seqlen)


@torch.no_grad()
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
    nll_sum = 0.0
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start: start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        # Each window's mean NLL over its seqlen - 1 predicted tokens, as in the papers.
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
            reduction="none",
        ).view(batch.shape[0], -1).mean(dim=1)
        nll_sum += float(loss.double().sum()) * seqlen
        if progress:
            progress("perplexity", min(start + batch_size, chunks.shape[0]), chunks.shape[0])
    mean_nll = nll_sum / (chunks.shape[0] * seqlen)
    value = math.exp(mean_nll) if math.isfinite(mean_nll) and mean_nll < 700 else None
    return PerplexityResult(value, chunks.shape[0], seqlen, nll_sum)
