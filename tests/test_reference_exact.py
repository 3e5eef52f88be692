"""Reference-exact numbers on the real SmolLM2-135M (de-quantised from 4 bits: |W| ties a lot).

1. Masks: on the inputs recorded from block 0's linears, each method and pattern prunes exactly
   the entries that an independent formula-level computation with the reference code's
   selection rules prunes (``tests/test_methods.py``: threshold at or below the k-th score,
   ``topk`` for N:M groups, the running-average Hessian), and the exact-count option prunes
   exactly its count.
2. End to end: the engine's Wanda and SparseGPT give the perplexity of an independent
   sequential pipeline written here (its own capture of block 0's inputs, its own hooks, its own
   block loop, the formulas of ``tests/test_methods.py``): Wanda's exactly, SparseGPT's within
   0.5%.

``SPARSEBENCH_REFERENCE_SAMPLES`` sets the calibration windows (default 8 x 256; the issue's
figures are at 32 x 256: run with ``-s`` to print them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from core.engine import data, models
from core.engine.evaluate.perplexity import perplexity
from core.engine.prune.methods import Target, get_method
from core.engine.prune.runner import prune_model
from tests.test_methods import (
    block_linears,
    capture_linear_inputs,
    out_in,
    ref_magnitude,
    ref_sparsegpt,
    ref_wanda,
    store,
)

pytestmark = pytest.mark.slow

SEQLEN = 256
WINDOWS = 8
SAMPLES = int(os.environ.get("SPARSEBENCH_REFERENCE_SAMPLES", "8"))
REFERENCES = {"magnitude": ref_magnitude, "wanda": ref_wanda, "sparsegpt": ref_sparsegpt}
RECORDED = ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def windows() -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluation ids, calibration windows) of the offline text."""
    _, tokenizer = models.load_model("smollm2-135m")
    ids = data.evaluation_ids(tokenizer, "wiki-offline", SEQLEN)
    calibration = data.calibration_ids(tokenizer, "wiki-offline", n_samples=SAMPLES,
                                       seqlen=SEQLEN, seed=0)
    return ids, calibration


@pytest.fixture(scope="module")
def recorded(windows) -> dict[str, tuple[nn.Module, torch.Tensor, list[torch.Tensor]]]:
    """Block 0's linears of the dense model: module, [out, in] weight, inputs per window."""
    model, _ = models.load_model("smollm2-135m")
    block = model.model.layers[0]
    with torch.no_grad():
        inputs = capture_linear_inputs(model, block, windows[1])
    linears = block_linears(block)
    return {name: (linears[name], out_in(linears[name]), inputs[name]) for name in RECORDED}


def engine_weight(method: str, module: nn.Module, weight: torch.Tensor,
                  xs: list[torch.Tensor], target: Target, selection: str) -> torch.Tensor:
    """The engine's pruned weight: the method's own collector fed window by window."""
    pruner = get_method(method, selection=selection)
    stats = pruner.collector(module)
    for x in xs:
        if stats is not None:
            stats.add_batch(x)
    with torch.no_grad():
        return pruner.prune(weight.clone(), stats, target)


@pytest.mark.parametrize("selection", ["reference", "exact"])
@pytest.mark.parametrize("target_text", ["0.5", "0.7", "2:4", "4:8"])
@pytest.mark.parametrize("method", list(REFERENCES))
def test_masks_on_recorded_smollm2_inputs(recorded, method, target_text, selection) -> None:
    target = Target.parse(target_text)
    for name, (module, weight, xs) in recorded.items():
        got = engine_weight(method, module, weight, xs, target, selection)
        want = REFERENCES[method](weight.clone(), xs, target, selection=selection)
        flips = int(((got == 0) != (want == 0)).sum())
        assert flips == 0, f"{name}: {flips} of {weight.numel()} mask entries differ"
        if method == "sparsegpt":
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-3)
        else:
            assert torch.equal(got, want), name
        zeros = int((got == 0).sum())
        if selection == "exact" and method == "magnitude" and not target.is_nm:
            assert zeros == int(weight.numel() * target.sparsity)
        if selection == "reference" and method == "magnitude" and not target.is_nm:
            # ties at the threshold are pruned too: more than the count where |W| ties
            assert zeros > int(weight.numel() * target.sparsity), name


def test_the_rules_differ_on_these_ties(recorded) -> None:
    """The two rules are not the same test twice: on SmolLM2's tied |W| they prune different
    entries (magnitude threshold, N:M groups)."""
    module, weight, xs = recorded["self_attn.q_proj"]
    for target in (Target(0.5), Target(n=2, m=4)):
        reference = engine_weight("magnitude", module, weight, xs, target, "reference")
        exact = engine_weight("magnitude", module, weight, xs, target, "exact")
        assert int(((reference == 0) != (exact == 0)).sum()) > 0, target


# -- end to end: the engine vs an independent sequential pipeline ----------------------------------
class _Caught(Exception):
    pass


def block0_inputs(model: nn.Module, calibration: torch.Tensor) -> list[tuple[Any, dict]]:
    """What decoder block 0 receives for each window (hidden states and keyword arguments)."""
    caught: list[tuple[Any, dict]] = []

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        caught.append((args[0] if args else kwargs.pop("hidden_states"), kwargs))
        raise _Caught

    handle = model.model.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for row in calibration:
            with contextlib.suppress(_Caught):
                model(input_ids=row.unsqueeze(0), use_cache=False)
    finally:
        handle.remove()
    return caught


def layer_inputs(layer: nn.Module, linears: dict[str, nn.Module], hidden: list[torch.Tensor],
                 kwargs: list[dict]) -> dict[str, list[torch.Tensor]]:
    """The inputs [tokens, in] of each linear of ``layer``, one tensor per window."""
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = [module.register_forward_hook(
        lambda _m, args, _out, name=name: inputs[name].append(
            args[0].reshape(-1, args[0].shape[-1]).float()))
        for name, module in linears.items()]
    try:
        for h, k in zip(hidden, kwargs, strict=True):
            layer(h, **k)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


@torch.no_grad()
def reference_pipeline(method: str, calibration: torch.Tensor) -> nn.Module:
    """SmolLM2 pruned to 50% block by block: each block's linears from the inputs that the
    already pruned blocks give it, with the formula-level reference of the method."""
    model, _ = models.load_model("smollm2-135m")
    states = block0_inputs(model, calibration)
    hidden, kwargs = [h for h, _ in states], [k for _, k in states]
    for layer in model.model.layers:
        linears = block_linears(layer)
        inputs = layer_inputs(layer, linears, hidden, kwargs)
        for name, module in linears.items():
            store(module, REFERENCES[method](out_in(module), inputs[name], Target(0.5)))
        outputs = [layer(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
        hidden = [o[0] if isinstance(o, tuple) else o for o in outputs]
    return model


def engine_pipeline(method: str, calibration: torch.Tensor) -> nn.Module:
    model, _ = models.load_model("smollm2-135m")
    if method != "dense":
        report = prune_model(model, get_method(method), Target(0.5), calibration)
        # measured, never assumed: the reference rule prunes ties at the threshold too
        assert report.overall == pytest.approx(0.5, abs=0.01)
    return model


@pytest.fixture(scope="module")
def engine_perplexity(windows) -> Callable[[str], float]:
    """The engine's perplexity of each method at 50%, computed once for this module."""
    ids, calibration = windows
    found: dict[str, float] = {}

    def of(method: str) -> float:
        if method not in found:
            result = perplexity(engine_pipeline(method, calibration), ids, SEQLEN,
                                batch_size=4, max_windows=WINDOWS)
            assert not result.diverged
            found[method] = result.value
        return found[method]

    return of


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_end_to_end_perplexity_equals_an_independent_pipeline(windows, engine_perplexity,
                                                              method) -> None:
    """Over 20 s (about 50 s Wanda, 85 s SparseGPT): the real SmolLM2 pruned whole, all 30
    blocks, twice (the engine, and the formula-level reference written here, SparseGPT's column
    by column), then both evaluated: the end-to-end equality the issue asks for cannot be had on
    part of the model."""
    ids, calibration = windows
    result = perplexity(reference_pipeline(method, calibration), ids, SEQLEN, batch_size=4,
                        max_windows=WINDOWS)
    assert not result.diverged
    engine, reference = engine_perplexity(method), result.value
    gap = engine / reference - 1
    print(f"SmolLM2 {method} 50%, {SAMPLES} x {SEQLEN} calibration, {WINDOWS} x {SEQLEN} "
          f"evaluation: engine {engine:.4f}, reference {reference:.4f}, {gap:+.3%}")
    # Wanda's statistics and selection are the reference's to the bit (issue 35): equal
    # perplexity; SparseGPT within 0.5% (its updates are summed in another order).
    assert abs(gap) <= (1e-9 if method == "wanda" else 0.005)


def test_smollm2_50_percent_ordering(engine_perplexity) -> None:
    ppl = {name: engine_perplexity(name) for name in ("dense", "wanda", "sparsegpt",
                                                       "magnitude")}
    print("SmolLM2 wiki-offline ppl at 50%:", {k: round(v, 2) for k, v in ppl.items()})
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["magnitude"]
