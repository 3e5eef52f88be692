"""The memory plan: real shapes on an 80 GB GPU with 128 GB of RAM, accepted or refused as the
plan says, with the path it takes; totals at submit, free memory when the run starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.engine import plan, shapes
from core.engine.plan import GIB, Work
from core.runs import placement, preflight
from tests.tiny_assets import tiny_llama_folder

GPU, RAM = 80 * GIB, 128 * GIB

#: shape, method, calibration samples x seqlen -> fits, activations, SparseLLM's FFN data,
#: zero-shot (all in bf16 with WikiText-2's 83 windows of 4096, batch 4, zero-shot on).
TABLE = [
    ("llama-2-7b", "wanda", 128, 2048, True, "device", "", "whole"),
    ("llama-2-7b", "sparsegpt", 128, 4096, True, "device", "", "whole"),
    ("llama-2-7b", "sparsellm", 128, 2048, True, "device", "device float32", "whole"),
    ("llama-2-7b", "sparsellm", 128, 4096, True, "device", "device bfloat16", "whole"),
    ("llama-3-8b", "wanda", 128, 4096, True, "device", "", "whole"),
    ("llama-3-8b", "sparsellm", 128, 2048, True, "device", "device float32", "whole"),
    ("llama-2-13b", "sparsegpt", 128, 4096, True, "device", "", "whole"),
    ("llama-2-13b", "sparsellm", 128, 4096, True, "device", "device bfloat16", "whole"),
    ("opt-13b", "sparsegpt", 128, 2048, True, "device", "", "whole"),
    ("opt-13b", "sparsellm", 128, 2048, True, "device", "device float32", "whole"),
    ("llama-2-70b", "wanda", 128, 4096, True, "device", "", "offloaded"),
    ("llama-2-70b", "sparsegpt", 128, 4096, True, "device", "", "offloaded"),
    ("llama-2-70b", "sparsellm", 128, 2048, True, "device", "device bfloat16", "offloaded"),
    ("llama-2-70b", "sparsellm", 128, 4096, False, "host", "host float32", "offloaded"),
]


def work(method: str, samples: int, seqlen: int, **change) -> Work:
    values = dict(dtype="bfloat16", device="cuda", method=method, samples=samples,
                  seqlen=seqlen, ppl_windows=83, ppl_seqlen=4096, batch_size=4, zero_shot=True)
    return Work(**{**values, **change})


@pytest.mark.parametrize(("shape", "method", "samples", "seqlen", "fits", "activations",
                          "ffn", "zero_shot"), TABLE)
def test_real_shapes_on_an_80_gb_gpu(shape, method, samples, seqlen, fits, activations, ffn,
                                     zero_shot):
    cfg = shapes.config_of(shape)
    chosen, ok = preflight.fitted_plan(cfg, work(method, samples, seqlen), GPU, RAM)
    assert (ok, chosen.activations, chosen.ffn_store, chosen.zero_shot) == (
        fits, activations, ffn, zero_shot)
    assert (chosen.peak_device <= GPU and chosen.peak_host <= RAM) == fits
    # one block on the device at a time: never the whole model while pruning
    pruning = chosen.phase("pruning a block")
    assert pruning is not None and pruning.device["block"] < plan.parameter_count(
        plan.shape_of(cfg)) * 2 / 10


def test_a_refusal_gives_the_numbers_and_what_would_fit():
    cfg = shapes.config_of("llama-2-70b")
    chosen, ok = preflight.fitted_plan(cfg, work("sparsellm", 128, 4096), GPU, RAM)
    assert not ok
    message = preflight.memory_problems(chosen, "cuda", GPU, RAM, "bfloat16")
    assert message == [
        "Memory: this run needs about 211.5 GiB of RAM at its peak (pruning a block: FFN data "
        "(host) 200.0 GiB + calibration activations 8.0 GiB + runtime 1.9 GiB + reading a "
        "block 1.6 GiB) but the host's RAM has 128.0 GiB in all; use fewer Samples or fewer "
        "Tokens per sample."]


def test_advice_names_only_what_would_change_something():
    """A 70B block held in 3 or 2 GiB of RAM: a bf16 run is never told to use bf16; an fp32 one
    whose block dominates is."""
    cfg = shapes.config_of("llama-2-70b")
    for dtype, advice, small in [("float32", "use Weights dtype bfloat16", 3 * GIB),
                                 ("bfloat16", "use a machine with more memory", 2 * GIB)]:
        chosen, ok = preflight.fitted_plan(cfg, Work(dtype=dtype, device="cpu", method="wanda",
                                                     samples=1, seqlen=128), None, small)
        assert not ok
        (message,) = preflight.memory_problems(chosen, "cpu", None, small, dtype)
        assert message.endswith(f"{advice}" + (" (half the weights' memory)."
                                               if dtype == "float32" else "."))
        assert "bfloat16" not in message or dtype == "float32"


def test_half_precision_is_computed_in_fp32_on_a_cpu_without_native_support():
    assert plan.compute_dtype_for("bfloat16", "cpu", native_bf16=False) == "float32"
    assert plan.compute_dtype_for("bfloat16", "cpu", native_bf16=True) == "bfloat16"
    assert plan.compute_dtype_for("float16", "cpu", native_bf16=True) == "float32"
    assert plan.compute_dtype_for("float16", "cuda:0") == "float16"
    cfg = shapes.config_of("llama-2-7b")
    fp32 = plan.build(plan.shape_of(cfg), Work(dtype="bfloat16", method="wanda", samples=4,
                                               seqlen=128, compute_dtype="float32"))
    native = plan.build(plan.shape_of(cfg), Work(dtype="bfloat16", method="wanda", samples=4,
                                                 seqlen=128, compute_dtype="bfloat16"))
    assert fp32.compute_dtype == "float32" and native.compute_dtype == "bfloat16"
    assert fp32.phase("pruning a block").host["block"] == \
        2 * native.phase("pruning a block").host["block"]


def test_submit_checks_totals_and_the_start_checks_free_memory(monkeypatch):
    """A GPU busy with another run does not refuse a queued one; the same run is refused when
    it starts and the memory is still taken."""
    monkeypatch.setattr(preflight, "device_memory",
                        lambda device, at_start=False: GIB if at_start else GPU)
    monkeypatch.setattr(preflight, "host_memory", lambda at_start: RAM)
    cfg = shapes.config_of("llama-2-7b")
    job = work("wanda", 128, 2048)
    assert preflight.plan_problems(cfg, job) == []
    (problem,) = preflight.plan_problems(cfg, job, at_start=True)
    assert "but cuda has 1.0 GiB free" in problem


def test_a_run_that_does_not_fit_what_is_free_fails_when_it_starts(tmp_path: Path,
                                                                     monkeypatch):
    folder = tiny_llama_folder(tmp_path / "m")
    monkeypatch.setattr(preflight, "budgets", lambda device, at_start=False: (
        None, 100 * 2**20 if at_start else RAM))
    job = Work(dtype="auto", device="cpu", method="wanda", samples=4, seqlen=32)
    assert preflight.plan_problems(preflight.load_config(str(folder))[0], job) == []
    with pytest.raises(placement.PlanRefused, match=r"needs about 0\.\d GiB of RAM .* but the "
                                                     r"host's RAM has 0\.1 GiB free"):
        placement.place(str(folder), "auto", "cpu", job, print)


def test_eval_windows_follow_the_text_and_the_cap():
    assert plan.eval_windows("wikitext2", 4096, None) == 340_000 // 4096
    assert plan.eval_windows("c4", 128, None) == 256  # the protocol's cut
    assert plan.eval_windows("wikitext2", 512, 32) == 32


MEASURE = """
import json, sys
from core.runs import preflight, registry
from core.runs.kinds.prune import PruneSpec
spec = PruneSpec.model_validate(json.loads(sys.argv[1]))
chosen, _ = preflight.fitted_plan(preflight.load_config(spec.model)[0], spec.work(), None, None)
result = registry.execute(spec, lambda *a: None, lambda text: None)
peak = next(m["value"] for m in result.metrics if m["metric"] == "peak_mb") * 2**20
print(json.dumps({"measured": peak, "planned": chosen.peak_host}))
"""


def measured_and_planned(values: dict) -> tuple[float, float]:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(values)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["measured"], found["planned"]


@pytest.mark.slow
def test_the_plans_peak_is_within_a_quarter_of_the_measured_one(tmp_path: Path):
    """Over 20 s (about 30 s): two real runs, each in a fresh process so that its peak resident
    memory is its own: Wanda on the offline SmolLM2 (fp32, the offline text; converted from its
    GGUF first on a new machine, which the plan counts) and on a 1B Llama shape with random
    weights (bf16, its first 2 blocks, a 128k-token vocabulary)."""
    from core.engine.shapes import write_random_checkpoint
    from tests.tiny_assets import SAMPLE_TEXT, tiny_tokenizer

    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT)
    shape = write_random_checkpoint(tmp_path / "1b", "llama-3.2-1b", blocks=2)
    tiny_tokenizer().save_pretrained(shape)
    runs = [dict(model="smollm2-135m", method="wanda", samples=8, seqlen=128, ppl_seqlen=128,
                 max_windows=4),
            dict(model=str(shape), method="wanda", calibration=str(text), samples=4, seqlen=64,
                 ppl_datasets=[str(text)], ppl_seqlen=64, max_windows=4)]
    for values in runs:
        measured, planned = measured_and_planned(values)
        assert 0.75 * measured <= planned <= 1.25 * measured, (values["model"], measured,
                                                             planned)
