"""Pruning masks from importance scores (True = pruned).  Lowest scores are pruned first."""

from __future__ import annotations

import torch


def lowest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries along the last dim (stable: earlier index first on ties)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
        mask.scatter_(-1, order, True)
    return mask


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``int(numel x sparsity)`` lowest scores of the whole matrix."""
    k = int(scores.numel() * sparsity)
    return lowest_mask(scores.reshape(-1), k).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``int(cols x sparsity)`` lowest scores in every row."""
    return lowest_mask(scores, int(scores.shape[-1] * sparsity))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, each group of ``m`` consecutive columns loses its ``n`` lowest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs the input width ({cols}) to be a multiple of M={m}")
    grouped = scores.reshape(rows, cols // m, m)
    return lowest_mask(grouped, n).reshape(rows, cols)
