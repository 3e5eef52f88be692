"""Every evaluation runs under ``torch.inference_mode``: with grad enabled globally and weights
that require grad (as a model built in code has them), no tensor an evaluation produces
requires grad, so no activation is kept for a backward pass that never comes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from core.engine import models
from core.engine.activation import apply_coreinfer
from core.engine.evaluate import zeroshot
from core.engine.evaluate.perplexity import blockwise_perplexity, perplexity
from core.runs.kinds import activation
from core.runs.kinds.activation import ActivationSpec, execute_activation, split_perplexity
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder


@contextmanager
def watched(model: nn.Module) -> Iterator[list[bool]]:
    """Grad on, every weight requiring grad; yields, for each module output produced
    meanwhile, whether it requires grad."""
    seen: list[bool] = []

    def hook(_module: nn.Module, _args: tuple, out: object) -> None:
        tensors = [out] if isinstance(out, torch.Tensor) else [
            t for t in (out if isinstance(out, tuple) else ()) if isinstance(t, torch.Tensor)]
        seen.extend(t.requires_grad for t in tensors)

    for param in model.parameters():
        param.requires_grad_(True)
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.enable_grad():
            yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("im-model"))
    model, tokenizer = models.load_model(str(folder))
    return folder, model, tokenizer


def test_perplexity_whole_and_blockwise_keep_no_graph(tiny):
    _, model, tokenizer = tiny
    ids = torch.tensor(tokenizer(SAMPLE_TEXT)["input_ids"][:256])
    with watched(model) as seen:
        whole = perplexity(model, ids, 32, batch_size=2)
        walked = blockwise_perplexity(model, ids, 32, batch_size=2)
    assert seen and not any(seen)
    assert walked.value == pytest.approx(whole.value, rel=1e-5)


def test_zero_shot_keeps_no_graph(tiny):
    _, model, tokenizer = tiny
    with watched(model) as seen:
        result = zeroshot.evaluate(model, tokenizer, ["sb_everyday"], limit=4, batch_size=2)
    assert not result.failures and seen and not any(seen)


def test_activation_runs_keep_no_graph(tiny, tmp_path, monkeypatch):
    folder, model, tokenizer = tiny
    ids = torch.tensor(tokenizer(SAMPLE_TEXT)["input_ids"][:128])
    handle = apply_coreinfer(model, sparsity=0.4)
    try:
        with watched(model) as seen:
            value = split_perplexity(model, ids, 32, 2)[0]
    finally:
        handle.remove()
    assert value is not None and seen and not any(seen)
    text = tmp_path / "t.txt"
    text.write_text(SAMPLE_TEXT)
    spec = ActivationSpec(model=str(folder), ppl_datasets=[str(text)], ppl_seqlen=32,
                          max_windows=2)
    modes = []

    def recording(*args, **kwargs):
        modes.append(torch.is_inference_mode_enabled())
        return split_perplexity(*args, **kwargs)

    monkeypatch.setattr(activation, "split_perplexity", recording)
    result = execute_activation(spec, lambda *a: None, lambda text: None)
    assert modes == [True] and not torch.is_inference_mode_enabled()
    assert any(m["metric"] == "ppl" and m["value"] for m in result.metrics)
