"""Perplexity: the Wanda / SparseGPT protocol, batch-size invariance, divergence reporting, the
collapsed rule (at or above the vocabulary size)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.engine.evaluate.perplexity import is_collapsed, perplexity, vocab_size, windows

SEQLEN = 16


@pytest.fixture
def model(archs):
    return archs["llama"].build()


@pytest.fixture
def ids() -> torch.Tensor:
    """5 full windows of 16 tokens plus a 7-token tail."""
    generator = torch.Generator().manual_seed(7)
    return torch.randint(0, 128, (5 * SEQLEN + 7,), generator=generator)


@torch.no_grad()
def direct_perplexity(model, ids: torch.Tensor, seqlen: int, count: int) -> float:
    """exp(mean NLL) over the first ``count`` non-overlapping windows, one window at a time."""
    nlls = []
    for w in range(count):
        window = ids[w * seqlen:(w + 1) * seqlen]
        logits = model(input_ids=window.unsqueeze(0)).logits[0].double()
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        nlls.append(-log_probs[torch.arange(seqlen - 1), window[1:]].mean().item())
    return math.exp(sum(nlls) / len(nlls))


def test_matches_direct_computation(model, ids):
    result = perplexity(model, ids, SEQLEN)
    assert result.windows == 5 and result.seqlen == SEQLEN and result.tokens == 80
    assert not result.diverged
    assert result.value == pytest.approx(direct_perplexity(model, ids, SEQLEN, 5), rel=1e-5)
    # a random model on random tokens: near the vocabulary size, nowhere near 1
    assert 50 < result.value < 300


def test_tail_is_dropped(model, ids):
    changed = ids.clone()
    changed[5 * SEQLEN:] = (changed[5 * SEQLEN:] + 1) % 128
    assert perplexity(model, changed, SEQLEN).value == perplexity(model, ids, SEQLEN).value


@pytest.mark.parametrize("batch_size", [3, 4, 10])
def test_batch_size_does_not_change_the_value(model, ids, batch_size):
    one = perplexity(model, ids, SEQLEN, batch_size=1).value
    assert perplexity(model, ids, SEQLEN, batch_size=batch_size).value == pytest.approx(one,
                                                                                       rel=1e-5)


def test_max_windows(model, ids):
    result = perplexity(model, ids, SEQLEN, max_windows=2, batch_size=3)
    assert result.windows == 2
    assert result.value == pytest.approx(direct_perplexity(model, ids, SEQLEN, 2), rel=1e-5)
    assert perplexity(model, ids, SEQLEN, max_windows=50).windows == 5
    assert windows(ids, SEQLEN, max_windows=3).shape == (3, SEQLEN)


def test_windows_are_consecutive_and_non_overlapping(ids):
    chunks = windows(ids, SEQLEN)
    assert chunks.shape == (5, SEQLEN)
    assert torch.equal(chunks.flatten(), ids[:5 * SEQLEN])


def test_progress_is_reported(model, ids):
    calls = []
    perplexity(model, ids, SEQLEN, batch_size=2, progress=lambda *a: calls.append(a))
    assert calls == [("perplexity", 0, 5), ("perplexity", 2, 5), ("perplexity", 4, 5),
                     ("perplexity", 5, 5)]  # the stage's start, then each batch


def nan_weight(model) -> None:
    model.lm_head.weight.data[3, 0] = float("nan")


def inf_weight(model) -> None:
    model.model.layers[1].mlp.down_proj.weight.data[0, 0] = float("inf")


def nan_hook(model) -> None:
    model.model.norm.register_forward_hook(lambda _m, _a, out: out * float("nan"))


def huge_logits(model) -> None:
    """Finite but enormous logits: exp(mean NLL) overflows a float."""
    model.lm_head.weight.data *= 1e6


@pytest.mark.parametrize("breaker", [nan_weight, inf_weight, nan_hook, huge_logits])
def test_diverged_model_is_reported_not_raised(model, ids, breaker):
    breaker(model)
    result = perplexity(model, ids, SEQLEN, batch_size=2)
    assert result.diverged is True
    assert result.value is None
    assert result.windows == 5


@pytest.mark.parametrize(("value", "vocab", "collapsed"), [
    (49151.9, 49152, False),  # below the vocabulary size: better than uniform guessing
    (49152.0, 49152, True),  # equal: exactly uniform guessing
    (6960449.0, 49152, True),  # above (issue 15's 95% magnitude run)
    (None, 49152, False),  # diverged is not collapsed
    (math.inf, 49152, False),
    (math.nan, 49152, False),
    (6960449.0, None, False),  # unknown vocabulary: no verdict
])
def test_collapsed_means_at_or_above_the_vocabulary_size(value, vocab, collapsed):
    assert is_collapsed(value, vocab) is collapsed


def test_vocab_size_is_the_output_embedding_rows(model):
    assert vocab_size(model) == model.config.vocab_size == 128
    model.resize_token_embeddings(136)  # padded rows count: the model predicts over them
    model.config.vocab_size = 128
    assert vocab_size(model) == 136
    model.get_output_embeddings = lambda: None  # no head to read: the config says
    model.config.vocab_size = 100
    assert vocab_size(model) == 100


def test_too_few_tokens(model):
    with pytest.raises(ValueError, match="fewer than one window of 16"):
        perplexity(model, torch.arange(SEQLEN - 1), SEQLEN)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, torch.arange(2 * SEQLEN), SEQLEN, batch_size=0)


def test_fp32_loss_even_for_half_logits(model, ids):
    """The loss is taken in fp32: a bf16 model gives about the fp32 value, not an overflow."""
    reference = perplexity(model, ids, SEQLEN).value
    half = perplexity(model.to(torch.bfloat16), ids, SEQLEN).value
    assert half == pytest.approx(reference, rel=0.05)


def test_cross_entropy_definition_matches(model, ids):
    """The direct helper above is the usual token-level cross entropy (a check of the test)."""
    window = ids[:SEQLEN]
    with torch.no_grad():
        logits = model(input_ids=window.unsqueeze(0)).logits[0]
    nll = F.cross_entropy(logits[:-1], window[1:]).item()
    assert direct_perplexity(model, ids, SEQLEN, 1) == pytest.approx(math.exp(nll), rel=1e-5)


def test_window_nlls_are_kept_in_order_and_make_up_the_value(model, ids):
    result = perplexity(model, ids, SEQLEN, batch_size=2)
    assert len(result.window_nlls) == 5
    for w, nll in enumerate(result.window_nlls):
        window = ids[w * SEQLEN:(w + 1) * SEQLEN]
        alone = perplexity(model, window, SEQLEN)
        assert nll == pytest.approx(math.log(alone.value), rel=1e-5)
    mean = sum(result.window_nlls) / 5
    assert result.value == pytest.approx(math.exp(mean), rel=1e-12)
    assert result.nll_sum == pytest.approx(mean * 5 * SEQLEN, rel=1e-12)
