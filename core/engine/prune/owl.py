"""OWL (Yin et al. 2024): outlier-weighted layer-wise sparsity, one unstructured target per block.

For block l, D_l = the share of the block's Wanda scores |W_ij| x ||X_j||_2 (all of its linears
together) that exceed M x the mean score of the block.  Blocks with more outliers are pruned less:
D is mapped linearly onto [0, 2 lambda], and block l gets ``target - (mapped_l - mean(mapped))``,
so the mean block sparsity is the request.  Each block's sparsity is then kept within [0.01, 0.99]
by one common shift of the others (so the mean still equals the request).

The activations come from one *dense* pass (block l sees the dense blocks 0..l-1): every target
depends on all blocks' D (through the min/max mapping and the mean shift), so the targets must be
fixed before any block is pruned -- which is also what the OWL paper does.  OWL is a setting of
magnitude, Wanda and SparseGPT (``get_method(name, owl=OWL(M, lam))``): the method's ``prepare``
step calls :meth:`OWL.block_targets`, which walks the dense blocks with the runner's one
traversal.  OWL is unstructured only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.engine.adapters import get_adapter, weight_matrix
from core.engine.prune.methods.base import Target
from core.engine.prune.methods.wanda import InputNorms, Wanda
from core.engine.prune.runner import BlockInputs, Traversal, as_source

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


def block_outlier_ratio(block: torch.nn.Module, traversal: Traversal, inputs: BlockInputs,
                        M: float) -> float:
    """D of one block: the share of its Wanda scores (all linears together) above M x their
    mean, from one dense pass of the block on ``inputs``.  One linear's scores exist at a
    time: they are computed once for the mean and again for the count."""
    stats = traversal.collect(block, Wanda(), inputs)
    linears = traversal.adapter.linears(block)

    def scores(name: str) -> torch.Tensor:
        norms = stats[name]
        assert isinstance(norms, InputNorms)
        weight = weight_matrix(linears[name])
        return weight.float().abs() * norms.norms.to(weight.device).unsqueeze(0)

    total = sum(float(scores(name).sum(dtype=torch.float64)) for name in linears)
    count = sum(weight_matrix(module).numel() for module in linears.values())
    threshold = M * total / count
    return sum(int((scores(name) > threshold).sum()) for name in linears) / count


@dataclass(frozen=True)
class OWL:
    """OWL's two settings: the outlier multiple ``M`` and the spread ``lam`` (lambda)."""

    M: float = DEFAULT_M
    lam: float = DEFAULT_LAMBDA

    def __post_init__(self) -> None:
        if not self.M > 0:
            raise ValueError(f"OWL M must be > 0; got {self.M}")
        if not 0 <= self.lam < 0.5:
            raise ValueError(f"OWL lambda must be in [0, 0.5); got {self.lam}")

    @torch.no_grad()
    def ratios(self, traversal: Traversal, last: int | None = None) -> list[float]:
        """D_l of blocks 0 .. last - 1, walking the dense blocks (block l sees dense 0..l-1)."""
        if traversal.calibration is None:
            raise ValueError("OWL needs calibration data")
        found: list[float] = []
        traversal.walk(lambda _i, block, inputs: found.append(
            block_outlier_ratio(block, traversal, inputs, self.M)), last=last,
            stage="OWL outlier ratios")
        return found

    def block_targets(self, traversal: Traversal, target: Target,
                      block_range: tuple[int, int]) -> list[Target]:
        """One unstructured target per decoder block: inside ``block_range`` they average to
        ``target``; the blocks outside stay dense (0)."""
        sparsity = _unstructured(target)
        n_blocks = len(traversal.adapter.blocks(traversal.model))
        start, end = block_range
        if sparsity == 0:
            return [Target()] * n_blocks
        inside = targets_from_ratios(self.ratios(traversal, last=end)[start:end], sparsity,
                                     self.lam)
        fractions = [0.0] * start + inside + [0.0] * (n_blocks - end)
        return [Target(sparsity=f) for f in fractions]


def outlier_ratios(model: torch.nn.Module, calibration: torch.Tensor, M: float = DEFAULT_M,
                   device: torch.device | str = "cpu") -> list[float]:
    """D_l for every decoder block, from one dense pass over ``calibration`` [samples, seqlen]."""
    owl = OWL(M=M)
    if calibration is None or calibration.numel() == 0:
        raise ValueError("OWL needs calibration data")
    return owl.ratios(Traversal(as_source(model), device, calibration))


def owl_targets(model: torch.nn.Module, calibration: torch.Tensor,
                target_sparsity: float | str | Target, M: float = DEFAULT_M,
                lam: float = DEFAULT_LAMBDA, device: torch.device | str = "cpu") -> list[float]:
    """One unstructured sparsity per decoder block (OWL), averaging to ``target_sparsity``."""
    target = _unstructured(target_sparsity)
    if target == 0:
        return [0.0] * len(get_adapter(model).blocks(model))
    return targets_from_ratios(outlier_ratios(model, calibration, M, device), target, lam)
