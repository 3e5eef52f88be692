"""The sparsity-levels method: scores, levels, the goal bisection, AVG."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine.activation import (
    BlockScores,
    apply_coreinfer,
    average_levels,
    collect_scores,
    levels_from_scores,
    mean_level,
    scores_from_activations,
    search_configs,
    threshold_for_goal,
)
from tests.conftest import ARCHS, VOCAB

HAND = torch.tensor([
    [1.0, -1.0, 0.0, 2.0],
    [3.0, 0.0, 1.0, -2.0],
    [0.0, 2.0, 1.0, 1.0],
])


def test_scores_on_hand_made_activations() -> None:
    s = scores_from_activations(HAND, top_k=2)
    # sums of max(A, 0): [4, 2, 2, 3]; 2nd largest = 3.  counts of A > 0: [2, 1, 2, 2]; max 2
    assert s.sum_score.tolist() == pytest.approx([4 / 3, 2 / 3, 2 / 3, 1.0])
    assert s.count_score.tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])
    assert s.tokens == 3
    # score(0.5, 0.5) = [1.1667, 0.5833, 0.8333, 1.0]
    assert levels_from_scores([s], 0.5, 0.5, 0.8) == [0.75]
    assert levels_from_scores([s], 0.5, 0.5, 1.05) == [0.25]
    assert levels_from_scores([s], 1.0, 0.0, 0.9) == [0.5]
    assert levels_from_scores([s], 0.0, 1.0, 0.9) == [0.75]
    with pytest.raises(ValueError, match="top_k"):
        scores_from_activations(HAND, top_k=5)


def test_levels_round_to_hundredths() -> None:
    s = scores_from_activations(torch.arange(1.0, 301.0).reshape(1, 300), top_k=1)
    # sum_score_j = (j + 1) / 300: 299 of 300 above 1/300 -> 0.9967 -> 1.0; 100 of 300 -> 0.33
    assert levels_from_scores([s], 1.0, 0.0, 1 / 300) == [1.0]
    assert levels_from_scores([s], 1.0, 0.0, 200 / 300) == [0.33]


def captured_activations(model: nn.Module, family: str, prompts: list[torch.Tensor],
                         site: str) -> list[torch.Tensor]:
    """Per block, every prompt's intermediate activations concatenated [tokens, d_ffn]."""
    blocks = ARCHS[family].blocks(model)
    store: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = []
    for i, block in enumerate(blocks):
        module = {"down": block.mlp.down_proj if family == "llama" else None,
                  "fc1": getattr(block, "fc1", None),
                  "act": getattr(getattr(block, "mlp", None), "act_fn", None)}[site]
        if site == "fc1":  # OPT: relu(fc1 output)
            hooks.append(module.register_forward_hook(
                lambda _m, _a, out, i=i: store[i].append(
                    torch.relu(out).reshape(-1, out.shape[-1]))))
        else:  # input of down_proj (act(gate) * up) or of act_fn (gate pre-activation)
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, i=i: store[i].append(args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        for ids in prompts:
            model(input_ids=ids.reshape(1, -1))
    for hook in hooks:
        hook.remove()
    return [torch.cat(parts) for parts in store]


PROMPTS = [torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n))
           for n in (7, 12, 20)]


@pytest.mark.parametrize(("family", "site", "source"), [
    ("llama", "down", "intermediate"), ("opt", "fc1", "intermediate"), ("llama", "act", "gate")])
def test_collect_scores_equals_direct_computation(family: str, site: str, source: str) -> None:
    model = ARCHS[family].build()
    scores = collect_scores(model, PROMPTS, top_k=10, source=source)
    acts = captured_activations(model, family, PROMPTS, site)
    assert len(scores) == len(acts) == 2
    for got, a in zip(scores, acts, strict=True):
        positive = a.double().clamp(min=0)
        sums = positive.sum(0)
        kth = sorted(sums.tolist(), reverse=True)[9]
        counts = (a > 0).sum(0).double()
        torch.testing.assert_close(got.sum_score, sums / kth)
        torch.testing.assert_close(got.count_score, counts / counts.max())
        assert got.tokens == 39


def test_collect_scores_then_levels_drive_coreinfer() -> None:
    model = ARCHS["llama"].build()
    scores = collect_scores(model, PROMPTS, top_k=10)
    threshold, levels = threshold_for_goal(scores, 0.5, goal=0.4, tol=0.01)
    handle = apply_coreinfer(model, levels=levels, token_sparsity=0.8)
    model.generate(PROMPTS[2].reshape(1, -1), max_new_tokens=3, do_sample=False, pad_token_id=0)
    stats = handle.stats()
    assert stats.configured == {0: levels[0], 1: levels[1]}
    for block, level in enumerate(levels):
        assert stats.kept_per_block[block] <= int(128 * level + 1e-9) / 128
    handle.remove()


def random_scores(blocks: int = 12, d_ffn: int = 400, seed: int = 0) -> list[BlockScores]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(blocks):
        acts = torch.randn(64, d_ffn, generator=gen, dtype=torch.float64) * (1 + b / blocks)
        acts += torch.randn(1, d_ffn, generator=gen, dtype=torch.float64)  # per-neuron bias
        out.append(scores_from_activations(acts, top_k=100))
    return out


@pytest.mark.parametrize("goal", [0.1, 0.26, 0.36, 0.4, 0.55, 0.8])
@pytest.mark.parametrize("sum_weight", [0.15, 0.45, 0.9])
def test_bisection_hits_the_goal(goal: float, sum_weight: float) -> None:
    scores = random_scores()
    result = threshold_for_goal(scores, sum_weight, goal, tol=0.005)
    threshold, levels = result
    assert result.reached
    assert abs(mean_level(levels) - goal) <= 0.005
    assert levels == levels_from_scores(scores, sum_weight, 1 - sum_weight, threshold)
    assert result.mean == pytest.approx(mean_level(levels))


def test_bisection_over_a_block_range() -> None:
    scores = random_scores()
    blocks = range(3, 10)
    _, levels = threshold_for_goal(scores, 0.3, 0.4, blocks=blocks)
    assert len(levels) == 12
    assert abs(sum(levels[3:10]) / 7 - 0.4) <= 0.005


def test_unreachable_goal_returns_the_closest_and_says_so() -> None:
    # one block of 3 neurons: the mean level can only be 0, 0.33, 0.67 or 1
    scores = [scores_from_activations(torch.tensor([[1.0, 2.0, 3.0]]), top_k=1)]
    result = threshold_for_goal(scores, 1.0, goal=0.45)
    assert not result.reached
    assert result.levels == [0.33] and result.mean == pytest.approx(0.33)
    assert "not reachable" in result.message


def test_levels_ordered_as_the_threshold_moves() -> None:
    scores = random_scores(blocks=5)
    previous = None
    for threshold in torch.linspace(-0.1, 2.0, 60).tolist():
        levels = levels_from_scores(scores, 0.4, 0.6, threshold)
        assert all(0.0 <= v <= 1.0 for v in levels)
        if previous is not None:
            assert all(a <= b for a, b in zip(levels, previous, strict=True))
        previous = levels
    assert levels_from_scores(scores, 0.4, 0.6, -0.1) == [1.0] * 5
    assert levels_from_scores(scores, 0.4, 0.6, 100.0) == [0.0] * 5


def test_average_levels_is_elementwise() -> None:
    assert average_levels([[0.2, 0.4, 0.6], [0.4, 0.4, 0.2], [0.3, 0.1, 0.1]]) == pytest.approx(
        [0.3, 0.3, 0.3])
    assert average_levels([[0.5, 0.25]]) == [0.5, 0.25]
    with pytest.raises(ValueError, match="length"):
        average_levels([[0.1, 0.2], [0.1]])
    with pytest.raises(ValueError):
        average_levels([])


def test_search_configs_seed_grid() -> None:
    scores = random_scores()
    configs = search_configs(scores, [0.15, 0.5, 0.85], goal=0.4, top_k=100)
    assert [c.params[:2] for c in configs] == [
        [0.15, 0.85], [0.5, 0.5], [0.85, pytest.approx(0.15)]]
    assert all(c.reached and abs(c.mean - 0.4) <= 0.005 for c in configs)
    assert abs(mean_level(average_levels([c.levels for c in configs])) - 0.4) <= 0.005
