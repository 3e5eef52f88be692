"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with error compensation, column blocks."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from core.engine.masks import Selection, matrix_mask, nm_mask
from core.engine.prune.methods import register
from core.engine.prune.methods.base import Collector, PruningMethod, Target
from core.engine.prune.methods.wanda import in_features


class Hessian(Collector):
    """H = (2 / N) sum X X^T (fp32, on the inputs' device), kept as the reference code keeps it:
    a running average updated per batch of ``sequences`` windows, in the same order of
    operations, so the same inputs give the same bits."""

    def __init__(self, in_features: int) -> None:
        self.in_features = in_features
        self.h: torch.Tensor | None = None
        self.samples = 0

    def add_batch(self, inputs: torch.Tensor, sequences: int = 1) -> None:
        if self.h is None:
            self.h = torch.zeros(self.in_features, self.in_features, dtype=torch.float32,
                                 device=inputs.device)
        self.h *= self.samples / (self.samples + sequences)
        self.samples += sequences
        x = math.sqrt(2 / self.samples) * inputs.t().float()  # [in, tokens]
        self.h += x.matmul(x.t())

    @property
    def hessian(self) -> torch.Tensor:
        """H (zeros before any batch)."""
        if self.h is None:
            return torch.zeros(self.in_features, self.in_features, dtype=torch.float32)
        return self.h

    def take(self) -> torch.Tensor:
        """H, handed over: the collector keeps no reference, so its memory goes with its
        last use."""
        found, self.h = self.hessian, None
        return found


def inverse_cholesky_upper(hessian: torch.Tensor | Hessian, weight: torch.Tensor,
                           dampening: float) -> torch.Tensor:
    """Fix dead inputs (zeroing their weight columns in place), damp, return upper chol of H^-1.

    Given the collector, its H is taken over and worked on in place, so at most two matrices of
    its size exist at once (a 70B model's FFN output linear: 3.3 GB each); given a tensor, a
    copy is (SparseLLM prunes from the same Hessian again)."""
    if isinstance(hessian, Hessian):
        h = hessian.take().to(weight.device)
    else:
        h = hessian.to(weight.device, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h.diagonal().add_(dampening * torch.mean(torch.diag(h)))  # = + damp x I, without the I
    lower = torch.linalg.cholesky(h)
    del h
    h_inv = torch.cholesky_inverse(lower)
    del lower
    return torch.linalg.cholesky(h_inv, upper=True)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor | Hessian, target: Target,
                    blocksize: int = 128, dampening: float = 0.01,
                    selection: Selection = "reference") -> torch.Tensor:
    """Prune ``weight`` [out, in] (fp32 copy returned) given its layer Hessian (a collector's
    is taken over: see ``inverse_cholesky_upper``).

    The unstructured mask is chosen once per block of columns, N:M per group at the group's
    first column, by ``selection``'s rule (``core.engine.masks``)."""
    w = weight.clone().float()
    u = inverse_cholesky_upper(hessian, w, dampening)
    cols = w.shape[1]
    if target.is_nm:
        if cols % target.m:
            raise ValueError(f"N:M needs the input width ({cols}) to be a multiple of "
                             f"M={target.m}")
        blocksize = max(target.m, blocksize - blocksize % target.m)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        u_block = u[start:end, start:end]
        diag = torch.diag(u_block)
        mask = None if target.is_nm else matrix_mask(
            w[:, start:end].pow(2) / diag.pow(2).unsqueeze(0), target.sparsity, selection)
        rows = w[:, start:end].t().contiguous()  # the block's columns as contiguous rows
        errors = _compensate(rows, u_block, diag, mask, target, selection)
        w[:, start:end] = rows.t()
        w[:, end:] -= errors.t().contiguous() @ u[start:end, end:]
    return w


def _compensate(rows: torch.Tensor, u_block: torch.Tensor, diag: torch.Tensor,
                mask: torch.Tensor | None, target: Target, selection: Selection) -> torch.Tensor:
    """One block's OBS steps on its columns held as rows (``rows`` [width, out], pruned in
    place); returns their errors [width, out].

    Each step is the reference's arithmetic element by element (error = pruned part / u_ii,
    later columns minus error x u_ij), with fewer operations: the pruned part is read through
    the mask, the update is one product and one subtraction on contiguous rows, and the
    pruned entries are zeroed once at the end (a column is never updated after its step).
    ``mask`` [out, width] is the block's (None: N:M, chosen per group at its first column)."""
    width = rows.shape[0]
    pruned = (mask.t().contiguous() if mask is not None
              else torch.zeros_like(rows, dtype=torch.bool))
    errors = torch.empty_like(rows)
    pivots = diag.tolist()
    for i in range(width):
        if target.is_nm and i % target.m == 0:
            group = rows[i:i + target.m].t().pow(2) / diag[i:i + target.m].pow(2)
            pruned[i:i + target.m] = nm_mask(group, target.n, target.m, selection).t()
        torch.div(torch.where(pruned[i], rows[i], 0.0), pivots[i], out=errors[i])
        if i + 1 < width:
            rows[i + 1:] -= torch.outer(u_block[i, i + 1:], errors[i])
    rows.masked_fill_(pruned, 0.0)
    return errors


class SparseGPTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocksize: int = Field(128, ge=1, description="Columns per block: one mask per block.")
    dampening: float = Field(0.01, ge=0, lt=1, description="Added to the Hessian diagonal, as "
                             "a fraction of its mean.")


@register
class SparseGPT(PruningMethod):
    name = "sparsegpt"
    supports_owl = True
    description = "One-shot OBS pruning with weight updates (blocks of columns, dampened Hessian)."
    Params = SparseGPTParams

    def collector(self, module: nn.Module) -> Collector:
        return Hessian(in_features(module))

    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        assert isinstance(stats, Hessian), "SparseGPT needs calibration statistics"
        return sparsegpt_prune(weight, stats, target, int(self.params["blocksize"]),
                               float(self.params["dampening"]), self.selection)
