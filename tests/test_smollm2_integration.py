"""Integration: the real SmolLM2-135M (offline GGUF -> safetensors cache) pruned at 50%."""

from __future__ import annotations

import math

import pytest

from core.engine import data, models
from core.engine.evaluate.perplexity import perplexity
from core.engine.prune.methods import Target, get_method
from core.engine.prune.runner import prune_model

pytestmark = pytest.mark.slow

SEQLEN = 256
WINDOWS = 8


@pytest.fixture(scope="module")
def eval_and_calibration():
    _, tokenizer = models.load_model("smollm2-135m")
    ids = data.evaluation_ids(tokenizer, "wiki-offline")
    calibration = data.calibration_ids(tokenizer, "wiki-offline", n_samples=8, seqlen=SEQLEN,
                                       seed=0)
    return ids, calibration


def pruned_perplexity(method: str | None, ids, calibration) -> float:
    model, _ = models.load_model("smollm2-135m")
    if method:
        report = prune_model(model, get_method(method), Target(0.5), calibration)
        assert report.overall == pytest.approx(0.5, abs=0.005)
        assert all(abs(lin.sparsity - 0.5) <= 0.005 for lin in report.linears)
    result = perplexity(model, ids, SEQLEN, batch_size=4, max_windows=WINDOWS)
    assert not result.diverged
    return result.value


def test_smollm2_50_percent_ordering(eval_and_calibration) -> None:
    ids, calibration = eval_and_calibration
    ppl = {name: pruned_perplexity(None if name == "dense" else name, ids, calibration)
           for name in ("dense", "wanda", "sparsegpt", "magnitude")}
    print("SmolLM2 wiki-offline ppl at 50%:", {k: round(v, 2) for k, v in ppl.items()})
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["magnitude"]


def test_smollm2_loads_from_cache_as_llama() -> None:
    model, tokenizer = models.load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 30 and model.config.hidden_size == 576
    assert tokenizer("Hello world")["input_ids"]
