"""Wanda (Sun et al. 2023): score |W_ij| x ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.engine.masks import nm_mask, row_mask
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target


class InputNorms(Collector):
    """Running sum of squares of every input feature, in fp32."""

    def __init__(self, in_features: int) -> None:
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.float()
        self.sum_sq += (x * x).sum(dim=0).cpu()
        self.tokens += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        return self.sum_sq.sqrt()


def in_features(module: nn.Module) -> int:
    weight = module.weight
    return weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1]


def cumulative_mask(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per row, prune the lowest scores whose cumulative sum stays within alpha x row sum."""
    ordered, order = torch.sort(scores, dim=-1, stable=True)
    keep_under = scores.sum(dim=-1, keepdim=True) * alpha
    pruned_sorted = torch.cumsum(ordered, dim=-1) <= keep_under
    return torch.zeros_like(pruned_sorted).scatter(-1, order, pruned_sorted)


def variant_mask(scores: torch.Tensor, sparsity: float, tolerance: float = 0.001,
                 max_steps: int = 60) -> tuple[torch.Tensor, float]:
    """The Wanda variant: bisection on alpha until the matrix sparsity is within ``tolerance``."""
    low, high = 0.0, 1.0
    alpha = 0.5
    mask = cumulative_mask(scores, alpha)
    for _ in range(max_steps):
        achieved = mask.float().mean().item()
        if abs(achieved - sparsity) <= tolerance:
            break
        if achieved > sparsity:
            high = alpha
        else:
            low = alpha
        alpha = (low + high) / 2
        mask = cumulative_mask(scores, alpha)
    return mask, alpha


@register
class Wanda(PruningMethod):
    name = "wanda"
    supports_owl = True
    description = ("Prune by |W| x input-feature norm, per output row. 'variant' prunes by a "
                   "cumulative-score threshold found by bisection.")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        variant: bool = Field(False, description="Prune by a cumulative-score threshold per "
                              "row found by bisection (the paper's variant), not the lowest "
                              "scores.")

    def collector(self, module: nn.Module) -> Collector:
        return InputNorms(in_features(module))

    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        assert isinstance(stats, InputNorms), "Wanda needs calibration statistics"
        scores = weight.abs() * stats.norms.to(weight.device).unsqueeze(0)
        if target.is_nm:
            mask = nm_mask(scores, target.n, target.m, self.selection)
        elif self.params["variant"]:
            mask, _ = variant_mask(scores, target.sparsity)
        else:
            mask = row_mask(scores, target.sparsity)
        return weight.masked_fill(mask, 0.0)
