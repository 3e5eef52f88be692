"""OWL (Yin et al. 2024): outlier-weighted layer-wise sparsity, one unstructured target per block.

For block l, D_l = the share of the block's Wanda scores |W_ij| x ||X_j||_2 (all of its linears
together) that exceed M x the mean score of the block.  Blocks with more outliers are pruned less:
D is mapped linearly onto [0, 2 lambda], and block l gets ``target - (mapped_l - mean(mapped))``,
so the mean block sparsity is the request.  Each block's sparsity is then kept within [0.01, 0.99]
by one common shift of the others (so the mean still equals the request).

The activations come from one *dense* pass (block l sees the dense blocks 0..l-1): every target
depends on all blocks' D (through the min/max mapping and the mean shift), so the targets must be
fixed before any block is pruned -- which is also what the OWL paper does.  Feed the result to
``core.runner.prune_model(..., block_targets=owl_targets(...))`` with magnitude, Wanda or
SparseGPT.  OWL is unstructured only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.engine.adapters import get_adapter, weight_matrix
from core.engine.prune.methods.base import Target
from core.engine.prune.methods.wanda import InputNorms, Wanda
from core.engine.prune.runner import _block_output, _collect, _move_outside_blocks, capture_inputs

DEFAULT_M = 5.0
DEFAULT_LAMBDA = 0.08
FLOOR = 0.01
CAP = 0.99


def _unstructured(target: float | str | Target) -> float:
    parsed = target if isinstance(target, Target) else Target.parse(target)
    if parsed.is_nm:
        raise ValueError(f"OWL gives every block its own unstructured sparsity; an N:M pattern "
                         f"({parsed.pattern}) has one fixed ratio per group and cannot vary by "
                         "block. Use an unstructured target such as 0.5.")
    return parsed.sparsity


def targets_from_ratios(ratios: Sequence[float], target: float, lam: float = 0.08,
                        floor: float = FLOOR, cap: float = CAP) -> list[float]:
    """Block sparsities from outlier ratios D (higher D -> lower sparsity), mean = ``target``.

    D is mapped onto [0, 2 lam] ((D - min) / (max - min) x 2 lam; all-equal D -> uniform),
    subtracted from the target around its mean, and clipped to [floor, cap] with one common
    shift chosen so that the mean is still the target (exact to ~1e-12).  A target below the
    floor (above the cap) lowers the floor (raises the cap) to the target; a target of 0 gives
    all zeros.
    """
    d = torch.tensor([float(r) for r in ratios], dtype=torch.float64)
    if d.numel() == 0:
        raise ValueError("OWL needs at least one block's outlier ratio")
    if not torch.isfinite(d).all():
        raise ValueError(f"OWL outlier ratios must be finite numbers; got {list(ratios)}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"OWL target sparsity must be in [0, 1); got {target}")
    if lam < 0:
        raise ValueError(f"OWL lambda must be >= 0; got {lam}")
    if target == 0:
        return [0.0] * d.numel()
    low, high = min(floor, target), max(cap, target)
    spread = float(d.max() - d.min())
    mapped = (d - d.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(d)
    raw = target - (mapped - mapped.mean())

    def clipped(shift: float) -> torch.Tensor:
        return (raw + shift).clamp(low, high)

    if bool(((raw >= low) & (raw <= high)).all()):
        return raw.tolist()
    # mean(clipped(shift)) rises monotonically with shift: bisect for mean == target.
    lo, hi = low - float(raw.max()), high - float(raw.min())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(clipped(mid).mean()) < target:
            lo = mid
        else:
            hi = mid
    return clipped((lo + hi) / 2).tolist()


@torch.no_grad()
def outlier_ratios(model: torch.nn.Module, calibration: torch.Tensor, M: float = 5.0,
                   device: torch.device | str = "cpu") -> list[float]:
    """D_l for every decoder block, from one dense pass over ``calibration`` [samples, seqlen]."""
    if M <= 0:
        raise ValueError(f"OWL M must be > 0; got {M}")
    if calibration is None or calibration.numel() == 0:
        raise ValueError("OWL needs calibration data")
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    _move_outside_blocks(model, adapter.blocks_path, device)
    inputs = capture_inputs(model, adapter, calibration, device)
    wanda = Wanda()
    ratios: list[float] = []
    for index, block in enumerate(blocks):
        home = next(block.parameters()).device
        block.to(device)
        stats = _collect(block, adapter, wanda, inputs)
        scores = []
        for name, module in adapter.linears(block).items():
            norms = stats[name]
            assert isinstance(norms, InputNorms)
            scores.append(weight_matrix(module).float().abs()
                          * norms.norms.to(weight_matrix(module).device).unsqueeze(0))
        total = sum(float(s.sum(dtype=torch.float64)) for s in scores)
        count = sum(s.numel() for s in scores)
        threshold = M * total / count
        ratios.append(sum(int((s > threshold).sum()) for s in scores) / count)
        del scores, stats
        if index + 1 < len(blocks):
            inputs.hidden = [_block_output(block(h, *a, **k))
                             for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs,
                                                strict=True)]
        block.to(home)
    return ratios


def owl_targets(model: torch.nn.Module, calibration: torch.Tensor,
                target_sparsity: float | str | Target, M: float = 5.0,
                lam: float = 0.08, device: torch.device | str = "cpu") -> list[float]:
    """One unstructured sparsity per decoder block (OWL), averaging to ``target_sparsity``."""
    target = _unstructured(target_sparsity)
    if target == 0:
        return [0.0] * len(get_adapter(model).blocks(model))
    return targets_from_ratios(outlier_ratios(model, calibration, M, device), target, lam)
