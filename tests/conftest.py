"""Shared fixtures: tiny random causal LMs of every supported family, built in code (no hub).

Every model has 2 decoder blocks, hidden size 64, MLP width 128 and a 128-token vocabulary, so a
whole pruning run takes milliseconds on a CPU.  Weights come from a fixed ``torch.manual_seed``,
the models are in eval mode and fp32.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from core.store import published
from core.store.db import Store

VOCAB = 128
HIDDEN = 64
FFN = 128
BLOCKS = 2
HEADS = 4
CALIBRATION_SHAPE = (4, 16)  # [samples, seqlen]

# The tensors here are tiny: one thread is ~50x faster than two fighting over a busy CPU, and it
# makes every float result reproducible from run to run.
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def _keep_main_module():
    """Put back ``sys.modules['__main__']`` after each test: Streamlit's script runner (under
    AppTest) leaves the last page script there, and a process spawned later would run that
    script (``app.py`` opening the default results file) before its target."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A results file holding the published figures only (one per test module)."""
    store = Store(tmp_path_factory.mktemp("pub") / "p.duckdb").init()
    published.sync(store)
    return store


# Expected prunable linears of one block, in module order, with their [out, in] shapes.
_LLAMA_LINEARS = {  # 4 query heads of 16, 2 key/value heads
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (32, HIDDEN),
    "self_attn.v_proj": (32, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN),
}


@dataclass(frozen=True)
class Arch:
    """One architecture family: how to build a tiny model and what the tests expect of it."""

    name: str
    factory: Callable[[], nn.Module]
    blocks_path: str  # attribute path from the CausalLM to its decoder blocks
    linears: dict[str, tuple[int, int]]  # expected linears of one block -> [out, in]
    conv1d: bool = False  # GPT-2 stores its projections transposed ([in, out])
    n_blocks: int = BLOCKS

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.factory().float().eval()

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        module = model
        for part in self.blocks_path.split("."):
            module = getattr(module, part)
        return module


ARCHS: dict[str, Arch] = {
    "llama": Arch(
        "llama",
        lambda: LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
            num_hidden_layers=BLOCKS, num_attention_heads=HEADS, num_key_value_heads=2,
            max_position_embeddings=64, tie_word_embeddings=False)),
        "model.layers", _LLAMA_LINEARS),
    "qwen2": Arch(
        "qwen2",
        lambda: Qwen2ForCausalLM(Qwen2Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
            num_hidden_layers=BLOCKS, num_attention_heads=HEADS, num_key_value_heads=2,
            max_position_embeddings=64)),
        "model.layers", _LLAMA_LINEARS),
    "opt": Arch(
        "opt",
        lambda: OPTForCausalLM(OPTConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=FFN, word_embed_proj_dim=HIDDEN,
            num_hidden_layers=BLOCKS, num_attention_heads=HEADS, max_position_embeddings=64)),
        "model.decoder.layers",
        {"self_attn.k_proj": (HIDDEN, HIDDEN), "self_attn.v_proj": (HIDDEN, HIDDEN),
         "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.out_proj": (HIDDEN, HIDDEN),
         "fc1": (FFN, HIDDEN), "fc2": (HIDDEN, FFN)}),
    "gpt2": Arch(
        "gpt2",
        lambda: GPT2LMHeadModel(GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_inner=FFN, n_layer=BLOCKS, n_head=HEADS,
            n_positions=64, bos_token_id=0, eos_token_id=0)),
        "transformer.h",
        {"attn.c_attn": (3 * HIDDEN, HIDDEN), "attn.c_proj": (HIDDEN, HIDDEN),
         "mlp.c_fc": (FFN, HIDDEN), "mlp.c_proj": (HIDDEN, FFN)},
        conv1d=True),
    "gpt_neox": Arch(
        "gpt_neox",
        lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
            num_hidden_layers=BLOCKS, num_attention_heads=HEADS, max_position_embeddings=64)),
        "gpt_neox.layers",
        {"attention.query_key_value": (3 * HIDDEN, HIDDEN), "attention.dense": (HIDDEN, HIDDEN),
         "mlp.dense_h_to_4h": (FFN, HIDDEN), "mlp.dense_4h_to_h": (HIDDEN, FFN)}),
}


@pytest.fixture(params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> Arch:
    """Every supported architecture family in turn."""
    return ARCHS[request.param]


@pytest.fixture
def tiny_model(arch: Arch) -> nn.Module:
    """A fresh tiny random model of the current architecture."""
    return arch.build()


@pytest.fixture
def archs() -> dict[str, Arch]:
    """All architecture families by name, for tests about one family."""
    return ARCHS


@pytest.fixture
def calibration() -> torch.Tensor:
    """Random calibration token ids ``[4, 16]`` (fixed seed)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, CALIBRATION_SHAPE, generator=generator)
