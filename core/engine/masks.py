"""Pruning masks from importance scores (True = pruned).  Lowest scores are pruned first.

Two selection rules (``Selection``):

- ``reference`` (the default): what the methods' reference code does, so that the same scores
  give the same mask.  Unstructured: one threshold, the ``int(numel x s)``-th smallest score
  (0-based, of a sorted copy), and every score at or below it is pruned, ties included (slightly
  more than ``s`` where scores tie).  N:M: ``torch.topk(largest=False)`` on each group of M
  columns, one group at a time as the reference calls it.
- ``exact``: exactly ``int(numel x s)`` (N per group) pruned, ties broken towards the earlier
  index by a stable sort: equal sparsity across methods, but not the published figures' rule.

Wanda's per-row rule (``row_mask``) is a stable sort in its reference code too.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Selection = Literal["reference", "exact"]
SELECTIONS: tuple[str, ...] = get_args(Selection)


def checked_selection(selection: str) -> Selection:
    """``selection`` if it is a known rule; a ValueError naming the allowed ones otherwise."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
    return selection  # type: ignore[return-value]


#: Rows sorted at once by ``lowest_mask``: the sort's values and int64 indices take 12 bytes an
#: entry, so a 70B model's FFN matrix (8192 x 28672) is sorted a slice of rows at a time.
SORT_ENTRIES = 1 << 24


def lowest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries along the last dim (stable: earlier index first on ties),
    sorted ``SORT_ENTRIES`` entries at a time (rows are independent: the same mask)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)  # contiguous
    if k <= 0:
        return mask
    flat, flat_mask = scores.reshape(-1, scores.shape[-1]), mask.view(-1, scores.shape[-1])
    rows = max(1, SORT_ENTRIES // max(scores.shape[-1], 1))
    for start in range(0, flat.shape[0], rows):
        order = torch.sort(flat[start:start + rows], dim=-1, stable=True).indices[..., :k]
        flat_mask[start:start + rows].scatter_(-1, order, True)
    return mask


def threshold_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference rule: prune every score at or below the ``int(numel x sparsity)``-th
    smallest of the whole tensor (ties at the threshold are pruned too)."""
    # the (k + 1)-th smallest value is the sorted copy's entry k: the same number, found
    # without sorting everything
    thresh = torch.kthvalue(scores.flatten(), int(scores.numel() * sparsity) + 1).values
    return scores <= thresh


def matrix_mask(scores: torch.Tensor, sparsity: float,
                selection: Selection = "reference") -> torch.Tensor:
    """One threshold for the whole matrix: the reference rule, or exactly ``int(numel x s)``."""
    if checked_selection(selection) == "reference":
        return threshold_mask(scores, sparsity)
    k = int(scores.numel() * sparsity)
    return lowest_mask(scores.reshape(-1), k).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``int(cols x sparsity)`` lowest scores in every row (stable sort)."""
    return lowest_mask(scores, int(scores.shape[-1] * sparsity))


def nm_mask(scores: torch.Tensor, n: int, m: int,
            selection: Selection = "reference") -> torch.Tensor:
    """In every row, each group of ``m`` consecutive columns loses its ``n`` lowest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs the input width ({cols}) to be a multiple of M={m}")
    if checked_selection(selection) == "exact":
        return lowest_mask(scores.reshape(rows, cols // m, m), n).reshape(rows, cols)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for start in range(0, cols, m):
        group = scores[:, start:start + m].float()
        mask.scatter_(1, start + torch.topk(group, n, dim=1, largest=False)[1], True)
    return mask
