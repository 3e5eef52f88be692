"""Run kind ``prune``: load a model, prune it (or keep it dense), evaluate perplexity and
zero-shot accuracy; returns a :class:`~core.runs.results.RunResult` (nothing is stored here)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from core.engine import data, environment, models
from core.engine.evaluate import zeroshot
from core.engine.evaluate.perplexity import perplexity
from core.engine.prune import owl
from core.engine.prune.methods import get_method
from core.engine.prune.runner import PruneReport, prune_model
from core.runs.registry import register_kind
from core.runs.results import ProgressFn, RunResult, Say
from core.runs.specs import PruneSpec


def layer_stat_rows(report: PruneReport) -> list[dict[str, Any]]:
    """Measured sparsity per linear, per block, and mean/std/min/max over blocks + overall."""
    rows: list[dict[str, Any]] = [
        {"block": lin.block, "layer": lin.name, "stat": "sparsity", "value": lin.sparsity}
        for lin in report.linears
    ]
    per_block = report.per_block()
    rows += [{"block": b, "layer": "block", "stat": "sparsity", "value": v}
             for b, v in per_block.items()]
    values = list(per_block.values())
    if values:
        lowest = min(per_block, key=per_block.__getitem__)
        highest = max(per_block, key=per_block.__getitem__)
        rows += [
            {"block": None, "layer": "model", "stat": "mean", "value": statistics.fmean(values)},
            {"block": None, "layer": "model", "stat": "std",
             "value": statistics.pstdev(values) if len(values) > 1 else 0.0},
            {"block": lowest, "layer": "model", "stat": "min", "value": per_block[lowest]},
            {"block": highest, "layer": "model", "stat": "max", "value": per_block[highest]},
            {"block": None, "layer": "model", "stat": "overall", "value": report.overall},
        ]
    return rows


def execute(spec: PruneSpec, progress: ProgressFn, say: Say) -> RunResult:
    """Load, prune (unless dense), optionally save, then evaluate ``spec``."""
    result = RunResult()
    progress("loading model", 0, 1)
    say(f"loading {spec.model} ({spec.dtype}) on {spec.device}")
    model, tokenizer = models.load_model(spec.model, dtype=spec.dtype, device="cpu",
                                         trust_remote_code=spec.trust_remote_code)
    if not spec.is_dense:
        prune(model, tokenizer, spec, result, progress, say)
    model.to(spec.device)
    if spec.save_dir:
        models.save_model(model, tokenizer, Path(spec.save_dir))
        say(f"saved to {spec.save_dir}")
    started = time.perf_counter()
    evaluate_perplexity(model, tokenizer, spec, result, progress, say)
    evaluate_zero_shot(model, tokenizer, spec, result, progress, say)
    result.metrics += [
        {"kind": "timing", "dataset": "-", "metric": "eval_seconds",
         "value": time.perf_counter() - started},
        {"kind": "memory", "dataset": "-", "metric": "peak_mb",
         "value": environment.peak_memory_mb(spec.device)},
    ]
    return result


def prune(model: torch.nn.Module, tokenizer: Any, spec: PruneSpec, result: RunResult,
          progress: ProgressFn, say: Say) -> None:
    """Calibrate (when the method or OWL needs it), prune, and record sparsity and time."""
    method = get_method(spec.method, **spec.method_params)
    target = spec.target()
    calibration = None
    if method.needs_calibration or spec.owl is not None:
        progress("calibration data", 0, 1)
        say(f"calibration: {spec.samples} x {spec.seqlen} tokens of {spec.calibration}, "
            f"seed {spec.seed}")
        calibration = data.calibration_ids(tokenizer, spec.calibration, spec.samples,
                                           spec.seqlen, spec.seed)
    started = time.perf_counter()
    block_targets = None
    if spec.owl is not None:
        progress("OWL outlier ratios", 0, 1)
        block_targets = owl_block_targets(model, calibration, spec, spec.device)
        result.layer_stats += [{"block": b, "layer": "block", "stat": "owl_target",
                                "value": t} for b, t in enumerate(block_targets)]
        say("OWL targets per block: " + ", ".join(f"{t:.3f}" for t in block_targets))
    say(f"pruning with {spec.method} to {target.label}")
    report = prune_model(model, method, target, calibration, device=spec.device,
                         block_range=tuple(spec.block_range) if spec.block_range else None,
                         progress=progress, block_targets=block_targets)
    seconds = time.perf_counter() - started
    say(f"pruned in {seconds:.1f} s; measured sparsity {report.overall:.4f}")
    result.layer_stats += layer_stat_rows(report)
    result.metrics += [
        {"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": seconds},
        {"kind": "sparsity", "dataset": "-", "metric": "measured", "value": report.overall},
    ]


def evaluate_perplexity(model: torch.nn.Module, tokenizer: Any, spec: PruneSpec,
                        result: RunResult, progress: ProgressFn, say: Say) -> None:
    """The perplexity protocol on each of the spec's datasets (diverged models named so)."""
    for name in spec.ppl_datasets:
        say(f"perplexity on {name} (seqlen {spec.ppl_seqlen}, "
            f"{spec.max_windows or 'all'} windows at most)")
        ids = data.evaluation_ids(tokenizer, name)
        res = perplexity(model, ids, spec.ppl_seqlen, spec.batch_size, spec.max_windows,
                         spec.device,
                         progress=lambda s, d, t, n=name: progress(f"perplexity {n}", d, t))
        result.metrics.append({
            "kind": "perplexity", "dataset": name, "metric": "ppl", "value": res.value,
            "n_samples": res.tokens, "status": "diverged" if res.diverged else "ok",
            "note": "non-finite loss: the model diverged" if res.diverged else None,
        })
        say(f"{name}: " + ("diverged" if res.diverged else f"ppl {res.value:.4f}")
            + f" over {res.windows} windows")


def evaluate_zero_shot(model: torch.nn.Module, tokenizer: Any, spec: PruneSpec,
                       result: RunResult, progress: ProgressFn, say: Say) -> None:
    """lm-eval on the spec's zero-shot tasks; a failed task is logged, the others kept."""
    if not spec.zero_shot_tasks:
        return
    say(f"zero-shot through lm-eval {zeroshot.lm_eval_version()}: "
        f"{', '.join(spec.zero_shot_tasks)} ({spec.num_fewshot}-shot, limit {spec.zs_limit})")
    zs = zeroshot.evaluate(model, tokenizer, list(spec.zero_shot_tasks), spec.num_fewshot,
                           spec.zs_limit, spec.batch_size, spec.device, progress)
    result.metrics += zs.rows
    for task, message in zs.failures.items():
        say(f"zero-shot task {task} failed (other tasks kept): {message}")


def owl_block_targets(model: torch.nn.Module, calibration: torch.Tensor, spec: PruneSpec,
                      device: str) -> list[float]:
    """OWL's per-block sparsities; with a block range, they average to the request over the range
    and the blocks outside stay dense (target 0)."""
    settings = spec.owl or {}
    ratios = owl.outlier_ratios(model, calibration, float(settings.get("M", owl.DEFAULT_M)),
                                device)
    start, end = spec.block_range or (0, len(ratios))
    end = min(end, len(ratios))
    inside = owl.targets_from_ratios(ratios[start:end], spec.target().sparsity,
                                     float(settings.get("lambda", owl.DEFAULT_LAMBDA)))
    return [0.0] * start + inside + [0.0] * (len(ratios) - end)

register_kind("prune", PruneSpec, execute, title="Prune + evaluate")
