"""CoreInfer: core-neuron selection, sparse decode vs an independent masked dense model, generate,
reversibility, measured kept fractions, and what lm-eval loglikelihood requests do."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.engine.activation import (
    CoreInferError,
    apply_coreinfer,
    core_neurons,
    coreinfer,
    neuron_counts,
    split_loglikelihood,
    token_limit,
)
from tests.conftest import ARCHS, FFN, VOCAB

FAMILIES = ("llama", "opt")


# -- reference helpers (written independently of the module) --------------------------------------
def reference_core_neurons(acts: torch.Tensor, token_sparsity: float, sparsity: float,
                           selection: str = "reference") -> list[int]:
    """Direct, loop-based CoreInfer selection on ``acts`` [tokens, d_ffn].  The chosen neurons
    (in index order, as ``unique(return_counts=True)`` gives them) are ranked by their counts
    with CoreInfer's ``torch.argsort(counts, descending=True)``, or, ``exact``, by (-count,
    index)."""
    rows = acts.tolist()
    d_ffn = len(rows[0])
    positives = sum(1 for row in rows for v in row if v > 0)
    limit = int(token_sparsity * (positives / len(rows)))
    counts = [0] * d_ffn
    for row in rows:
        ranked = sorted(range(d_ffn), key=lambda j, row=row: (-row[j], j))
        for j in ranked[:limit]:
            counts[j] += 1
    chosen = [j for j in range(d_ffn) if counts[j] > 0]
    if selection == "reference":
        order = torch.argsort(torch.tensor([counts[j] for j in chosen]), descending=True)
        candidates = [chosen[i] for i in order.tolist()]
    else:
        candidates = sorted(chosen, key=lambda j: (-counts[j], j))
    return sorted(candidates[: int(d_ffn * sparsity)])


def ffn_site(model: nn.Module, family: str, block: int) -> nn.Module:
    """The module whose input is the FFN intermediate activation (down_proj / fc2)."""
    layer = ARCHS[family].blocks(model)[block]
    return layer.mlp.down_proj if family == "llama" else layer.fc2


def masked_reference(model: nn.Module, family: str, masks: dict[int, torch.Tensor]) -> list:
    """Pre-hooks that multiply the intermediate activation by a 0/1 mask [batch, d_ffn]."""
    handles = []
    for block, mask in masks.items():
        def pre(_m: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
            h = args[0]
            if h.dim() == 2:  # OPT flattens [batch * tokens, d_ffn]
                return (h * mask.repeat_interleave(h.shape[0] // mask.shape[0], dim=0),)
            return (h * mask[:, None, :],)
        handles.append(ffn_site(model, family, block).register_forward_pre_hook(pre))
    return handles


def masks_from_selection(selection: dict[int, list[torch.Tensor]]) -> dict[int, torch.Tensor]:
    masks = {}
    for block, kept in selection.items():
        mask = torch.zeros(len(kept), FFN)
        for b, idx in enumerate(kept):
            mask[b, idx] = 1.0
        masks[block] = mask
    return masks


def build(family: str) -> nn.Module:
    """The tiny model, with random biases (OPT initialises them to zero, hiding bias bugs)."""
    model = ARCHS[family].build()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model


def prompt(batch: int = 1, tokens: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(seed))


# -- selection ------------------------------------------------------------------------------------
HAND = torch.tensor([
    [3.0, 1.0, -1.0, 2.0, 0.0, -2.0],
    [0.5, 4.0, 2.0, -1.0, 1.0, 3.0],
    [-1.0, -2.0, 5.0, 1.0, 0.2, -3.0],
    [2.0, -1.0, 1.0, 3.0, -2.0, 0.1],
])


def test_selection_on_hand_made_activations() -> None:
    # 15 positives over 4 tokens: limit = int(0.6 * 3.75) = 2 per token
    assert token_limit(HAND, 0.6) == 2
    # top-2 per token: {0,3} {1,5} {2,3} {3,0} -> counts
    assert neuron_counts(HAND, 0.6).tolist() == [2, 1, 1, 3, 0, 1]
    # keep int(6 * 0.5) = 3: neuron 3 (3 votes), 0 (2), then the lowest index among the 1-vote
    # ties (exact), or the one CoreInfer's non-stable argsort ranks first among them
    assert core_neurons(HAND, 0.6, 3, "exact").tolist() == [0, 1, 3]
    ranked = torch.argsort(torch.tensor([2, 1, 1, 3, 1]), descending=True).tolist()
    assert core_neurons(HAND, 0.6, 3).tolist() == sorted([0, 1, 2, 3, 5][i] for i in ranked[:3])
    assert core_neurons(HAND, 0.6, 5).tolist() == [0, 1, 2, 3, 5]
    # neuron 4 was never chosen: it is not kept even when all 6 are allowed
    assert core_neurons(HAND, 0.6, 6).tolist() == [0, 1, 2, 3, 5]
    assert core_neurons(HAND, 0.1, 6).tolist() == []  # limit int(0.375) = 0
    # a tie at the limit: the lower index wins; every neuron positive and token_sparsity 1
    assert neuron_counts(torch.tensor([[5.0, 3.0, 3.0, 1.0]]), 0.5).tolist() == [1, 1, 0, 0]
    assert neuron_counts(torch.tensor([[1.0, 3.0, 5.0, 3.0]]), 0.5).tolist() == [0, 1, 1, 0]
    assert neuron_counts(HAND.abs() + 1, 1.0).tolist() == [4] * 6


@pytest.mark.parametrize("selection", ["reference", "exact"])
@pytest.mark.parametrize("seed", range(6))
def test_selection_equals_direct_computation(seed: int, selection: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(9, 40, generator=gen) - 0.3 * seed / 5
    acts[:, 7] = acts[:, 3]  # exact ties between two neurons
    for token_sparsity in (0.2, 0.5, 1.0):
        for sparsity in (0.1, 0.4, 0.9):
            expected = reference_core_neurons(acts, token_sparsity, sparsity, selection)
            got = core_neurons(acts, token_sparsity, int(40 * sparsity), selection)
            assert got.tolist() == expected
        assert torch.equal(coreinfer._counts_torch(acts, token_sparsity),
                           neuron_counts(acts, token_sparsity))


@pytest.mark.parametrize("selection", ["reference", "exact"])
@pytest.mark.parametrize("seed", range(3))
def test_cpu_selection_equals_the_device_one_at_model_width(seed: int, selection: str) -> None:
    """The CPU path (numpy counts, torch ranking only) keeps the same neurons as the torch
    path devices run, where coarse activations tie in every token and counts tie at the cut."""
    gen = torch.Generator().manual_seed(seed)
    acts = (torch.randn(64, 1536, generator=gen) * 2).round() / 2
    for token_sparsity, keep in ((0.2, 614), (0.05, 300), (0.5, 1400)):
        device_way = coreinfer._core_neurons_torch(acts, token_sparsity, keep,
                                                   selection == "reference")
        assert torch.equal(core_neurons(acts, token_sparsity, keep, selection), device_way)


@pytest.mark.parametrize("seed", range(4))
def test_counts_on_coarse_activations_with_ties_at_every_limit(seed: int) -> None:
    """Activations on a coarse grid tie at the limit in most tokens: each token's top ``limit``
    by a stable descending sort (lower index first), counted per neuron."""
    gen = torch.Generator().manual_seed(seed)
    acts = (torch.randn(33, 64, generator=gen) * 2).round() / 2
    for token_sparsity in (0.1, 0.3, 0.7):
        limit = token_limit(acts, token_sparsity)
        top = torch.sort(acts, dim=1, descending=True, stable=True).indices[:, :limit]
        expected = torch.bincount(top.reshape(-1), minlength=64)
        assert torch.equal(neuron_counts(acts, token_sparsity), expected)  # numpy on the CPU
        assert torch.equal(coreinfer._counts_torch(acts, token_sparsity), expected)  # devices


# -- sparse decode == dense with the same neurons zeroed -------------------------------------------
def decode_logits(model: nn.Module, ids: torch.Tensor, steps: int,
                  attention_mask: torch.Tensor | None = None,
                  feed: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list]:
    """Pre-fill ``ids`` then ``steps`` single-token decodes; returns each forward's last logits."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attention_mask, use_cache=True)
        logits = [out.logits[:, -1]]
        tokens = []
        cache = out.past_key_values
        mask = attention_mask
        for step in range(steps):
            nxt = feed[step] if feed is not None else logits[-1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            out = model(input_ids=nxt, past_key_values=cache, attention_mask=mask, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
    return logits, tokens


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_sparse_decode_equals_masked_dense(family: str, batch: int) -> None:
    model = build(family)
    reference = copy.deepcopy(model)
    ids = prompt(batch, 12, seed=3)
    mask = None
    if batch > 1:  # left padding on the first sequence
        mask = torch.ones_like(ids)
        mask[0, :4] = 0
    handle = apply_coreinfer(model, sparsity=0.4, token_sparsity=0.3)
    sparse, tokens = decode_logits(model, ids, steps=5, attention_mask=mask)
    masks = masks_from_selection(handle.selection())
    assert set(masks) == {0, 1}
    # reference: dense pre-fill, then decode with the intermediate activation times the 0/1 mask
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(sparse[0], out.logits[:, -1], rtol=0, atol=1e-5)
    hooks = masked_reference(reference, family, masks)
    try:
        cache, amask, ref = out.past_key_values, mask, []
        with torch.no_grad():
            for nxt in tokens:
                if amask is not None:
                    amask = torch.cat([amask, torch.ones_like(nxt)], dim=1)
                step = reference(input_ids=nxt, past_key_values=cache, attention_mask=amask,
                                 use_cache=True)
                cache = step.past_key_values
                ref.append(step.logits[:, -1])
    finally:
        for hook in hooks:
            hook.remove()
    for got, want in zip(sparse[1:], ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and the masking matters: the dense decode differs
    dense, _ = decode_logits(copy.deepcopy(reference), ids, 5, mask, feed=tokens)
    gaps = [(a - b).abs().max().item() for a, b in zip(dense[1:], sparse[1:], strict=True)]
    assert max(gaps) > 1e-3
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("token_sparsity", "sparsity"), [(0.4, 0.5), (1.0, 1.0)])
def test_padded_batch_selects_per_sequence_without_pads(family: str, token_sparsity: float,
                                                        sparsity: float) -> None:
    """(1.0, 1.0): tokens with fewer positives than the limit also vote for non-positive
    neurons; OPT must rank those by the fc1 output, not by the (all zero) ReLU output."""
    model = ARCHS[family].build()
    ids = prompt(2, 10, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    handle = apply_coreinfer(model, sparsity=sparsity, token_sparsity=token_sparsity)
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for b in (0, 1):
        layer = ARCHS[family].blocks(model)[b]
        if family == "llama":  # act(gate) * up, the input of down_proj
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
                lambda _m, args, b=b: captured.__setitem__(b, args[0].detach().clone())))
        else:  # OPT ranks the fc1 outputs (the ReLU keeps their order and their positives)
            hooks.append(layer.fc1.register_forward_hook(
                lambda _m, _a, out, b=b: captured.__setitem__(b, out.detach().clone())))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=True)
    for hook in hooks:
        hook.remove()
    for block, kept in handle.selection().items():
        acts = captured[block].reshape(2, 10, FFN)
        for b in range(2):
            rows = acts[b][mask[b].bool()]
            assert kept[b].tolist() == reference_core_neurons(rows, token_sparsity, sparsity)
        assert kept[0].tolist() != kept[1].tolist()
    handle.remove()


# -- generate, reversibility, parameters ----------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_remove_restore_dense(family: str) -> None:
    model = ARCHS[family].build()
    ids = prompt(1, 10, seed=1)
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
    keys = list(model.state_dict())
    originals = [m for m in model.modules()]
    handle = apply_coreinfer(model, sparsity=0.3, token_sparsity=0.3)
    assert list(model.state_dict()) == keys  # parameters shared, same names
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 16)
    stats = handle.stats()
    assert stats.decode_steps == 5 and stats.prefill_forwards == 1 and stats.acted
    handle.remove()
    handle.remove()  # idempotent
    assert [m for m in model.modules()] == originals
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    # converting again works after remove
    apply_coreinfer(model).remove()


def test_parameters_are_checked() -> None:
    model = ARCHS["llama"].build()
    with pytest.raises(CoreInferError, match="kept fraction"):
        apply_coreinfer(model, sparsity=0.0)
    with pytest.raises(CoreInferError, match="token_sparsity"):
        apply_coreinfer(model, token_sparsity=1.5)
    with pytest.raises(CoreInferError, match="block range"):
        apply_coreinfer(model, start=1, end=1)
    with pytest.raises(CoreInferError, match="levels"):
        apply_coreinfer(model, levels=[0.2, 0.3, 0.4])
    handle = apply_coreinfer(model)
    with pytest.raises(CoreInferError, match="already"):
        apply_coreinfer(model)
    handle.remove()
    with pytest.raises(CoreInferError, match="supports"):
        apply_coreinfer(ARCHS["gpt2"].build())


def test_block_range_converts_only_those_blocks() -> None:
    model = ARCHS["llama"].build()
    mlp0 = model.model.layers[0].mlp
    handle = apply_coreinfer(model, start=1, end=2)
    assert model.model.layers[0].mlp is mlp0
    assert type(model.model.layers[1].mlp).__name__ == "CoreInferLlamaMLP"
    model.generate(prompt(), max_new_tokens=3, do_sample=False, pad_token_id=0)
    stats = handle.stats()
    assert stats.blocks == [1] and stats.n_blocks == 2
    assert stats.kept_fraction_all_blocks == pytest.approx((1.0 + stats.kept_fraction) / 2)
    handle.remove()


# -- measured sparsity ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_measured_kept_fraction_equals_kept_share(family: str) -> None:
    model = ARCHS[family].build()
    handle = apply_coreinfer(model, sparsity=0.4, token_sparsity=0.6)
    model.generate(prompt(1, 16), max_new_tokens=5, do_sample=False, pad_token_id=0)
    stats = handle.stats()
    share = int(FFN * 0.4) / FFN  # 51 / 128
    assert stats.kept_per_block == {0: share, 1: share}
    assert stats.kept_fraction == share
    assert stats.decode_tokens == 4
    handle.remove()

    levels = [0.25, 0.5]
    handle = apply_coreinfer(model, levels=levels, token_sparsity=0.6)
    model.generate(prompt(1, 16), max_new_tokens=4, do_sample=False, pad_token_id=0)
    stats = handle.stats()
    assert stats.kept_per_block == {0: 32 / 128, 1: 64 / 128}
    assert stats.configured == {0: 0.25, 1: 0.5}
    handle.reset_stats()
    assert handle.stats().decode_steps == 0 and handle.stats().kept_fraction is None
    model.generate(prompt(1, 16, seed=7), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert handle.stats().kept_per_block == {0: 32 / 128, 1: 64 / 128}
    assert handle.stats().decode_tokens == 2
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_measured_kept_fraction_is_not_the_parameter(family: str) -> None:
    """With a small token_sparsity the tokens choose fewer distinct neurons than the parameter
    allows; the measured share follows what was computed, per sequence of a batch too."""
    model = ARCHS[family].build()
    handle = apply_coreinfer(model, sparsity=0.9, token_sparsity=0.05)
    ids = prompt(2, 8, seed=9)
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                   pad_token_id=0)
    stats = handle.stats()
    for block, kept in handle.selection().items():
        widths = [len(k) for k in kept]
        assert stats.kept_per_block[block] == pytest.approx(sum(widths) / (2 * FFN))
        assert stats.kept_per_block[block] < 0.9
    assert stats.decode_tokens == 2 * 2
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_only_workload_reports_no_decode(family: str) -> None:
    """A loglikelihood request is one forward over context + continuation: dense, not acted."""
    model = ARCHS[family].build()
    ids = prompt(3, 14)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    handle = apply_coreinfer(model, sparsity=0.2)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.equal(logits, dense)
    stats = handle.stats()
    assert stats.decode_steps == 0 and not stats.acted and stats.kept_fraction is None
    assert stats.prefill_forwards == 1 and stats.selected_fraction is not None
    assert "did not act" in stats.notes[0]
    rows = {r["metric"]: r for r in stats.metric_rows()}
    assert rows["actual_sparsity"]["status"] == "missing"
    assert rows["actual_sparsity"]["value"] is None
    # a forward that builds no KV cache cannot be decoded from: dense, and nothing is selected
    handle.reset_stats()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, dense)
    stats = handle.stats()
    assert stats.prefill_forwards == 1 and stats.selected_fraction is None and not stats.acted
    handle.remove()


# -- causal loglikelihood -------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_split_loglikelihood_scores_continuation_sparse(family: str) -> None:
    model = build(family)
    reference = copy.deepcopy(model)
    ctx = prompt(1, 10, seed=2)[0].tolist()
    cont = prompt(1, 4, seed=4)[0].tolist()
    whole = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(reference(input_ids=whole).logits[0, :-1], -1)
    dense_score = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert split_loglikelihood(reference, ctx, cont)[0] == pytest.approx(dense_score, abs=1e-4)

    handle = apply_coreinfer(model, sparsity=0.3, token_sparsity=0.3)
    score, _ = split_loglikelihood(model, ctx, cont)
    masks = masks_from_selection(handle.selection())
    stats = handle.stats()
    assert stats.decode_steps == 1 and stats.decode_tokens == len(cont) - 1
    # reference: the context pre-fill dense, the continuation with the context's core neurons
    with torch.no_grad():
        out = reference(input_ids=torch.tensor([ctx]), use_cache=True)
        hooks = masked_reference(reference, family, masks)
        step = reference(input_ids=torch.tensor([cont[:-1]]), past_key_values=out.past_key_values,
                         use_cache=True)
        for hook in hooks:
            hook.remove()
    logits = torch.cat([out.logits[:, -1:], step.logits], 1)[0]
    logp = torch.log_softmax(logits, -1)
    want = sum(logp[i, t].item() for i, t in enumerate(cont))
    assert score == pytest.approx(want, abs=1e-4)
    assert abs(score - dense_score) > 1e-4
    handle.remove()


def test_coreinfer_lm_through_lm_eval(tmp_path) -> None:
    pytest.importorskip("lm_eval")
    from core.engine import models
    from core.engine.activation import coreinfer_lm
    from tests.tiny_assets import tiny_llama_folder

    model, tokenizer = models.load_model(str(tiny_llama_folder(tmp_path / "m")))
    handle = apply_coreinfer(model, sparsity=0.4)
    lm = coreinfer_lm(model, tokenizer, batch_size=1, device="cpu")
    context = tokenizer("The start of sentence 1 is", add_special_tokens=False)["input_ids"]
    continuation = tokenizer(" a plain example about pruning", add_special_tokens=False)[
        "input_ids"]
    got = lm._loglikelihood_tokens([(None, context, continuation)], disable_tqdm=True)
    handle.reset_stats()
    want = split_loglikelihood(model, context, continuation)
    assert got[0][0] == pytest.approx(want[0], abs=1e-6) and got[0][1] == want[1]
    assert handle.stats().decode_tokens == len(continuation) - 1
    handle.remove()


def test_lm_eval_multiple_choice_plain_vs_split(tmp_path) -> None:
    """Plain HFLM: loglikelihood is pre-fill only, CoreInfer does not act (dense scores).
    coreinfer_lm: the continuations are scored sparse after the context pre-fill."""
    pytest.importorskip("lm_eval")
    from core.engine import models
    from core.engine.activation import coreinfer_lm
    from core.engine.evaluate import zeroshot
    from tests.tiny_assets import tiny_llama_folder

    model, tokenizer = models.load_model(str(tiny_llama_folder(tmp_path / "m")))
    dense = zeroshot.evaluate(model, tokenizer, ["sb_everyday"], limit=6, batch_size=4)
    handle = apply_coreinfer(model, sparsity=0.2)
    plain = zeroshot.evaluate(model, tokenizer, ["sb_everyday"], limit=6, batch_size=4)
    stats = handle.stats()
    assert stats.prefill_forwards > 0 and stats.decode_steps == 0 and not stats.acted
    assert plain.raw["sb_everyday"]["acc,none"] == dense.raw["sb_everyday"]["acc,none"]

    handle.reset_stats()
    from lm_eval import simple_evaluate

    lm = coreinfer_lm(model, tokenizer, batch_size=1, device="cpu")
    out = simple_evaluate(model=lm, tasks=["sb_everyday"], limit=6,
                          task_manager=zeroshot.task_manager(None), verbosity="WARNING")
    assert 0.0 <= out["results"]["sb_everyday"]["acc,none"] <= 1.0
    stats = handle.stats()
    assert stats.acted and stats.decode_steps > 0
    assert stats.kept_fraction <= 0.2
    handle.remove()
