"""RIA (Zhang et al., ICLR 2024, "Plug-and-Play"): relative importance x activation.

Score S_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) x ||X_j||^a, the input norms
accumulated as Wanda's (the reference's ``WrappedGPT``).  As the reference code
(biomedical-cybernetics/Relative-importance-and-activation-pruning, ``prune_ria``) chooses:
unstructured against one threshold per matrix (``per_row``: within each output row, its
``--per_outneuron``); N:M group by group, or after its heuristic channel reallocation
(``reallocation``: the input channels sorted by their summed score and dealt into the groups,
so that each group mixes strong and weak channels; the mask is N:M in that channel order).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.engine.masks import matrix_mask, nm_mask, row_mask
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target
from core.engine.prune.methods.wanda import InputNorms, in_features


def ria_scores(weight: torch.Tensor, norms: torch.Tensor, a: float) -> torch.Tensor:
    """Relative importance (against the weight's column and its row) x input norm ** a."""
    magnitude = torch.abs(weight)
    relative = (magnitude / torch.sum(magnitude, dim=0)
                + magnitude / torch.sum(magnitude, dim=1).reshape(-1, 1))
    return relative * norms.to(weight.device).reshape((1, -1)) ** a


def reallocated_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """The reference's channel reallocation ('sum' importance): channels sorted by their summed
    score, the i-th of M equal parts dealt to position i of every group (every other part in
    reverse order)."""
    cols = scores.shape[1]
    ranked = torch.sort(torch.sum(scores, dim=0))[1]
    order = torch.zeros_like(ranked)
    for part in range(1, m + 1):
        chunk = ranked[int(cols * (part - 1) / m):int(cols * part / m)]
        order[part - 1::m] = chunk if part % 2 == 1 else chunk.flip(0)
    return order


def reallocated_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M chosen group by group in the reallocated channel order, mapped back."""
    order = reallocated_order(scores, m)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, order] = nm_mask(scores[:, order], n, m)
    return mask


class RIAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    norm_exponent: float = Field(0.5, ge=0, le=4, description="Exponent of the input-feature "
                                 "norm in the score (the paper's a).")
    per_row: bool = Field(False, description="Unstructured: prune within each output row (the "
                          "reference's --per_outneuron), not against one threshold for the "
                          "matrix.")
    reallocation: bool = Field(False, description="N:M: the reference's heuristic channel "
                               "reallocation before choosing each group's N; the mask is then "
                               "N:M in the reallocated channel order, not the stored one.")


@register
class RIA(PruningMethod):
    name = "ria"
    description = ("Relative importance and activation (Zhang et al. 2024): |W| relative to its "
                   "row and column, times the input norm ** a.")
    Params = RIAParams

    def collector(self, module: nn.Module) -> Collector:
        return InputNorms(in_features(module))

    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        assert isinstance(stats, InputNorms), "RIA needs calibration statistics"
        scores = ria_scores(weight, stats.norms, float(self.params["norm_exponent"]))
        if target.is_nm and self.params["reallocation"]:
            mask = reallocated_nm_mask(scores, target.n, target.m)
        elif target.is_nm:
            mask = nm_mask(scores, target.n, target.m, self.selection)
        elif self.params["per_row"]:
            mask = row_mask(scores, target.sparsity)
        else:
            mask = matrix_mask(scores, target.sparsity, self.selection)
        return weight.masked_fill(mask, 0.0)
