"""Architecture adapters: blocks, linear names, [out, in] weights, what is prunable."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from core.engine.adapters import get_adapter, prunable_names, set_weight_matrix, weight_matrix


def test_blocks_and_linear_names(arch, tiny_model):
    adapter = get_adapter(tiny_model)
    blocks = adapter.blocks(tiny_model)
    assert blocks is arch.blocks(tiny_model)
    assert len(blocks) == arch.n_blocks
    for block in blocks:
        assert list(adapter.linears(block)) == list(arch.linears)


def test_weight_matrix_is_out_by_in(arch, tiny_model):
    """Shapes from the config, and the module really computes x @ weight_matrix.T (+ bias)."""
    adapter = get_adapter(tiny_model)
    x = torch.randn(3, 256)
    for block in adapter.blocks(tiny_model):
        for name, module in adapter.linears(block).items():
            w = weight_matrix(module)
            assert tuple(w.shape) == arch.linears[name], name
            inputs = x[:, : w.shape[1]]
            bias = module.bias if module.bias is not None else 0.0
            with torch.no_grad():
                torch.testing.assert_close(module(inputs) - bias, inputs @ w.t())
            assert isinstance(module, Conv1D) == arch.conv1d


def test_set_weight_matrix_round_trip(arch, tiny_model):
    adapter = get_adapter(tiny_model)
    for name, module in adapter.linears(adapter.blocks(tiny_model)[0]).items():
        new = torch.randn(*arch.linears[name])
        set_weight_matrix(module, new)
        assert torch.equal(weight_matrix(module), new)
        stored = module.weight.data
        assert torch.equal(stored, new.t() if arch.conv1d else new)


def test_prunable_names_are_exactly_the_block_linears(arch, tiny_model):
    names = prunable_names(tiny_model)
    expected = [f"{arch.blocks_path}.{b}.{linear}" for b in range(arch.n_blocks)
                for linear in arch.linears]
    assert sorted(names) == sorted(expected)
    modules = dict(tiny_model.named_modules())
    for name in names:
        assert isinstance(modules[name], (nn.Linear, Conv1D)), name
    # every embedding and norm, and every linear outside the blocks (lm_head), is left out
    embeddings_and_norms = {n for n, m in modules.items()
                            if isinstance(m, (nn.Embedding, nn.LayerNorm))
                            or "norm" in type(m).__name__.lower()}
    head = {n for n, m in modules.items() if isinstance(m, (nn.Linear, Conv1D))
            and not n.startswith(arch.blocks_path + ".")}
    assert head == {"lm_head"}
    assert len(embeddings_and_norms) >= 2 * arch.n_blocks + 2
    assert embeddings_and_norms.isdisjoint(names) and head.isdisjoint(names)
    for name in names:
        assert not any(word in name for word in ("embed", "norm", "lm_head", "wte", "wpe",
                                                 "ln_"))


@pytest.mark.parametrize("model_type", ["mistral", "qwen3"])
def test_llama_like_types_share_the_llama_adapter(model_type):
    from core.engine.adapters import ADAPTERS

    assert ADAPTERS[model_type] == ADAPTERS["llama"]
