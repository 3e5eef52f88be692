"""The sparsity-levels method (seed 003): one CoreInfer kept fraction per block, from neuron scores.

From ``n`` calibration prompts of the target task, per block, with ``A`` the FFN activations of all
calibration tokens (``tokens x d_ffn``, every prompt's tokens pooled):

* ``sum_score_j = sum_t max(A_tj, 0) / (top_k-th largest of those sums)``
* ``count_score_j = #{t: A_tj > 0} / (largest such count)``
* ``score_j = sum_weight * sum_score_j + count_weight * count_score_j``
* ``level = round(share of neurons with score_j > threshold, 2)``

:func:`collect_scores` runs the model once; :func:`levels_from_scores` turns the scores into
levels for any ``(sum_weight, count_weight, threshold)``; :func:`threshold_for_goal` finds the
threshold whose mean level hits a goal (bisection) instead of the hand tuning of seed 003, which
missed the goal by up to 0.01; :func:`average_levels` is the seed's "AVG" configuration.

"FFN activations" are the intermediate units CoreInfer selects from (the input of ``down_proj`` /
``fc2``: ``act(gate) * up`` for Llama, ``relu(fc1)`` for OPT).  The seed author's scripts hooked
the input of Llama's ``act_fn`` instead (the gate pre-activation); ``source="gate"`` reproduces
that for the Llama family.  For OPT both are the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.engine.adapters import get_adapter

SOURCES = ("intermediate", "gate")


@dataclass(frozen=True)
class BlockScores:
    """Normalised per-neuron scores of one block (float64, CPU)."""

    sum_score: torch.Tensor  # [d_ffn]
    count_score: torch.Tensor  # [d_ffn]
    tokens: int  # calibration tokens that produced them

    def score(self, sum_weight: float, count_weight: float) -> torch.Tensor:
        return sum_weight * self.sum_score + count_weight * self.count_score


def scores_from_activations(acts: torch.Tensor, top_k: int) -> BlockScores:
    """The two normalised scores of one block from its activations ``[tokens, d_ffn]``."""
    acts = acts.reshape(-1, acts.shape[-1])
    return _normalise(acts.double().clamp(min=0).sum(0), (acts > 0).sum(0).double(),
                      top_k, acts.shape[0])


def _normalise(sums: torch.Tensor, counts: torch.Tensor, top_k: int, tokens: int,
               block: int | None = None) -> BlockScores:
    where = "" if block is None else f" in block {block}"
    d_ffn = sums.numel()
    if not 1 <= top_k <= d_ffn:
        raise ValueError(f"top_k must be between 1 and d_ffn ({d_ffn}); got {top_k}")
    kth = torch.topk(sums, top_k).values[-1]
    if kth <= 0:
        raise ValueError(f"fewer than top_k={top_k} neurons were ever positive{where}: the sum "
                         "score cannot be normalised; lower top_k or use more prompts")
    top_count = counts.max()
    if top_count <= 0:
        raise ValueError(f"no neuron was ever positive{where}")
    return BlockScores(sums / kth, counts / top_count, tokens)


@torch.inference_mode()
def collect_scores(model: nn.Module, prompts_token_ids: Iterable[Any], top_k: int = 100,
                   source: str = "intermediate") -> list[BlockScores]:
    """Per-block scores from calibration prompts (one forward each, batch 1, no padding).

    ``prompts_token_ids``: 1-D token id sequences (lists or tensors; a ``[1, T]`` tensor is fine).
    Collect once and reuse the result for every ``(sum_weight, count_weight, threshold)``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    if source == "gate" and adapter.ffn_activation is None:
        raise ValueError(f"source='gate' needs a gated (SwiGLU) FFN; {adapter.family!r} has none")
    device = next(model.parameters()).device
    sums: list[torch.Tensor | None] = [None] * len(blocks)
    counts: list[torch.Tensor | None] = [None] * len(blocks)
    handles = []
    for i, block in enumerate(blocks):
        target = block.get_submodule(adapter.ffn_down if source == "intermediate"
                                     else adapter.ffn_activation)

        def hook(_m: nn.Module, args: tuple, _out: Any, i: int = i) -> None:
            acts = args[0].detach()
            acts = acts.reshape(-1, acts.shape[-1])
            s = acts.double().clamp(min=0).sum(0)
            c = (acts > 0).sum(0).double()
            sums[i] = s if sums[i] is None else sums[i] + s
            counts[i] = c if counts[i] is None else counts[i] + c

        handles.append(target.register_forward_hook(hook))
    tokens = 0
    try:
        for prompt in prompts_token_ids:
            ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
            if ids.shape[1] == 0:
                continue
            tokens += ids.shape[1]
            model(input_ids=ids.to(device))
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("no calibration tokens: give at least one non-empty prompt")
    return [_normalise(s.cpu(), c.cpu(), top_k, tokens, block=i)
            for i, (s, c) in enumerate(zip(sums, counts, strict=True))]


def levels_from_scores(scores: Sequence[BlockScores], sum_weight: float, count_weight: float,
                       threshold: float) -> list[float]:
    """Per-block kept fraction: share of neurons with score > threshold, rounded to 0.01."""
    return [round(int((s.score(sum_weight, count_weight) > threshold).sum())
                  / s.sum_score.numel(), 2) for s in scores]


def mean_level(levels: Sequence[float], blocks: Sequence[int] | None = None) -> float:
    """Mean of ``levels`` over ``blocks`` (default all): the "actual sparsity" of a config."""
    chosen = [levels[b] for b in blocks] if blocks is not None else list(levels)
    if not chosen:
        raise ValueError("no blocks to average over")
    return sum(chosen) / len(chosen)


class GoalResult(tuple):
    """``(threshold, levels)`` with ``.mean``, ``.reached`` and ``.message``."""

    threshold: float
    levels: list[float]
    mean: float
    reached: bool
    message: str

    def __new__(cls, threshold: float, levels: list[float], mean: float, reached: bool,
                message: str) -> GoalResult:
        self = super().__new__(cls, (threshold, levels))
        self.threshold, self.levels, self.mean = threshold, levels, mean
        self.reached, self.message = reached, message
        return self


def threshold_for_goal(scores: Sequence[BlockScores], sum_weight: float, goal: float,
                       tol: float = 0.005, count_weight: float | None = None,
                       blocks: Sequence[int] | None = None,
                       iterations: int = 200) -> GoalResult:
    """The threshold whose mean level (over ``blocks``, default all) is closest to ``goal``.

    Bisection on the threshold (the mean level never rises as the threshold rises).
    ``count_weight`` defaults to ``1 - sum_weight`` (seed 003).  Unpacks as
    ``(threshold, levels)``; ``.reached`` is False when the discrete levels cannot come within
    ``tol`` of the goal, and ``.message`` then says how close they came.
    """
    if not 0 <= goal <= 1:
        raise ValueError(f"goal is a mean kept fraction in [0, 1]; got {goal}")
    count_weight = 1.0 - sum_weight if count_weight is None else count_weight
    all_scores = [s.score(sum_weight, count_weight) for s in scores]
    if not all_scores:
        raise ValueError("no block scores")

    def mean_at(t: float) -> tuple[float, list[float]]:
        levels = levels_from_scores(scores, sum_weight, count_weight, t)
        return mean_level(levels, blocks), levels

    lowest = min(float(s.min()) for s in all_scores)
    highest = max(float(s.max()) for s in all_scores)
    lo = math.nextafter(lowest, -math.inf)  # every neuron above: mean 1.0
    hi = highest  # no neuron above: mean 0.0
    mean_lo, levels_lo = mean_at(lo)
    mean_hi, levels_hi = mean_at(hi)
    # invariant: mean(lo) >= goal > mean(hi) (unless the goal is at an end)
    if goal >= mean_lo:
        hi, mean_hi, levels_hi = lo, mean_lo, levels_lo
    elif goal <= mean_hi:
        lo, mean_lo, levels_lo = hi, mean_hi, levels_hi
    else:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            mean_mid, levels_mid = mean_at(mid)
            if mean_mid >= goal:
                lo, mean_lo, levels_lo = mid, mean_mid, levels_mid
            else:
                hi, mean_hi, levels_hi = mid, mean_mid, levels_mid
    if abs(mean_lo - goal) <= abs(mean_hi - goal):
        threshold, mean, levels = lo, mean_lo, levels_lo
    else:
        threshold, mean, levels = hi, mean_hi, levels_hi
    reached = abs(mean - goal) <= tol + 1e-12
    if reached:
        message = f"mean level {mean:.4f} is within {tol} of the goal {goal}"
    else:
        message = (f"goal {goal} is not reachable within {tol}: the levels jump from "
                   f"{mean_lo:.4f} to {mean_hi:.4f} at threshold {lo:.6g}..{hi:.6g}; "
                   f"returning the closest ({mean:.4f})")
    return GoalResult(threshold, levels, mean, reached, message)


def average_levels(level_vectors: Sequence[Sequence[float]]) -> list[float]:
    """Element-wise mean of several level vectors (seed 003's "AVG"; not rounded)."""
    vectors = [list(map(float, v)) for v in level_vectors]
    if not vectors:
        raise ValueError("no level vectors to average")
    lengths = {len(v) for v in vectors}
    if len(lengths) != 1:
        raise ValueError(f"level vectors differ in length: {sorted(lengths)}")
    return [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]


@dataclass(frozen=True)
class LevelConfig:
    """One searched configuration, ``params`` in seed 003's order."""

    sum_weight: float
    count_weight: float
    threshold: float
    top_k: int
    levels: list[float]
    mean: float
    reached: bool

    @property
    def params(self) -> list[float]:
        return [self.sum_weight, self.count_weight, self.threshold, self.top_k]


def search_configs(scores: Sequence[BlockScores], sum_weights: Iterable[float], goal: float,
                   top_k: int, tol: float = 0.005,
                   blocks: Sequence[int] | None = None) -> list[LevelConfig]:
    """Seed 003's grid: for each ``sum_weight`` (``count_weight = 1 - sum_weight``) the threshold
    that hits ``goal``.  ``top_k`` is recorded (it was fixed when the scores were collected)."""
    configs = []
    for sum_weight in sum_weights:
        result = threshold_for_goal(scores, sum_weight, goal, tol, blocks=blocks)
        configs.append(LevelConfig(sum_weight, 1.0 - sum_weight, result.threshold, top_k,
                                   result.levels, result.mean, result.reached))
    return configs
