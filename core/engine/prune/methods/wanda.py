"""Wanda (Sun et al. 2023): score |W_ij| x ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.engine.masks import nm_mask, row_mask
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target


class InputNorms(Collector):
    """Each input feature's squared norm over the calibration tokens, in fp32, accumulated as
    the reference code does: a running average over the sequences, one batch at a time
    (``s *= n / (n + t); n += t; s += ||X_batch||^2 / n``, the norm taken over the batch's
    tokens).  ``norms`` is ``sqrt(s)``: the reference's scaler, ``||X_j||_2 / sqrt(n)``; the
    common factor changes no mask, but the order of the sums decides ties."""

    def __init__(self, in_features: int) -> None:
        self.scaler: torch.Tensor | None = None
        self.in_features = in_features
        self.samples = 0

    def add_batch(self, inputs: torch.Tensor, sequences: int = 1) -> None:
        """One batch of ``sequences`` sequences (the runner's calibration batches hold one),
        its tokens as rows of ``inputs`` [tokens, in_features]."""
        if self.scaler is None:
            self.scaler = torch.zeros(self.in_features, dtype=torch.float32,
                                      device=inputs.device)
        self.scaler *= self.samples / (self.samples + sequences)
        self.samples += sequences
        x = inputs.t().float()  # [in, tokens], as the reference holds it
        self.scaler += torch.norm(x, p=2, dim=1) ** 2 / self.samples

    @property
    def norms(self) -> torch.Tensor:
        """sqrt of the running average (zeros before any batch)."""
        if self.scaler is None:
            return torch.zeros(self.in_features, dtype=torch.float32)
        return self.scaler.sqrt()


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
