"""Magnitude pruning: score |W|, one threshold per matrix (N:M: per row groups)."""

from __future__ import annotations

import torch

from core.engine.masks import matrix_mask, nm_mask
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    supports_owl = True
    description = "Prune the smallest |W| of each weight matrix; needs no calibration data."
    needs_calibration = False

    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        scores = weight.abs()
        if target.is_nm:
            mask = nm_mask(scores, target.n, target.m, self.selection)
        else:
            mask = matrix_mask(scores, target.sparsity, self.selection)
        return weight.masked_fill(mask, 0.0)
