"""Integration: the real SmolLM2-135M (offline GGUF -> safetensors cache).  Its pruned
perplexities are checked in ``tests/test_reference_exact.py``."""

from __future__ import annotations

import pytest

from core.engine import models

pytestmark = pytest.mark.slow


def test_smollm2_loads_from_cache_as_llama() -> None:
    model, tokenizer = models.load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 30 and model.config.hidden_size == 576
    assert tokenizer("Hello world")["input_ids"]
