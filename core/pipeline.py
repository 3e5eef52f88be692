"""Execute one run spec: load, prune, evaluate; then store every result in one transaction.

Results are gathered in memory and written together with the final status, so a cancelled or
crashed run never leaves half of its numbers behind.
"""

from __future__ import annotations

import logging
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from core import data, environment, models, zeroshot
from core.methods import get_method
from core.perplexity import perplexity
from core.runner import PruneReport, prune_model
from core.spec import DENSE, PruneSpec
from core.store import Store

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def _quiet(_stage: str, _done: int, _total: int) -> None:
    pass


@dataclass
class RunResult:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)


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


def execute(spec: PruneSpec, progress: ProgressFn = _quiet,
            say: Callable[[str], None] = log.info) -> RunResult:
    """Run ``spec`` and return its results (nothing is stored here)."""
    problems = spec.validate()
    if problems:
        raise ValueError("Invalid run spec: " + " ".join(problems))
    result = RunResult()
    device = spec.device
    progress("loading model", 0, 1)
    say(f"loading {spec.model} ({spec.dtype}) on {device}")
    model, tokenizer = models.load_model(spec.model, dtype=spec.dtype, device="cpu",
                                         trust_remote_code=spec.trust_remote_code)
    if spec.method != DENSE:
        method = get_method(spec.method, **spec.method_params)
        target = spec.target()
        calibration = None
        if method.needs_calibration:
            progress("calibration data", 0, 1)
            say(f"calibration: {spec.samples} x {spec.seqlen} tokens of {spec.calibration}, "
                f"seed {spec.seed}")
            calibration = data.calibration_ids(tokenizer, spec.calibration, spec.samples,
                                               spec.seqlen, spec.seed)
        say(f"pruning with {spec.method} to {target.label}")
        started = time.perf_counter()
        report = prune_model(model, method, target, calibration, device=device,
                             block_range=tuple(spec.block_range) if spec.block_range else None,
                             progress=progress)
        seconds = time.perf_counter() - started
        say(f"pruned in {seconds:.1f} s; measured sparsity {report.overall:.4f}")
        result.layer_stats = layer_stat_rows(report)
        result.metrics += [
            {"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": seconds},
            {"kind": "sparsity", "dataset": "-", "metric": "measured", "value": report.overall},
        ]
    model.to(device)
    if spec.save_dir:
        save_model(model, tokenizer, Path(spec.save_dir))
        say(f"saved to {spec.save_dir}")
    started = time.perf_counter()
    for name in spec.ppl_datasets:
        say(f"perplexity on {name} (seqlen {spec.ppl_seqlen}, "
            f"{spec.max_windows or 'all'} windows at most)")
        ids = data.evaluation_ids(tokenizer, name)
        res = perplexity(model, ids, spec.ppl_seqlen, spec.batch_size, spec.max_windows, device,
                         progress=lambda s, d, t, n=name: progress(f"perplexity {n}", d, t))
        result.metrics.append({
            "kind": "perplexity", "dataset": name, "metric": "ppl", "value": res.value,
            "n_samples": res.tokens, "status": "diverged" if res.diverged else "ok",
            "note": "non-finite loss: the model diverged" if res.diverged else None,
        })
        say(f"{name}: " + ("diverged" if res.diverged else f"ppl {res.value:.4f}")
            + f" over {res.windows} windows")
    if spec.zero_shot_tasks:
        say(f"zero-shot through lm-eval {zeroshot.lm_eval_version()}: "
            f"{', '.join(spec.zero_shot_tasks)} ({spec.num_fewshot}-shot, limit {spec.zs_limit})")
        zs = zeroshot.evaluate(model, tokenizer, list(spec.zero_shot_tasks), spec.num_fewshot,
                               spec.zs_limit, spec.batch_size, device, progress)
        result.metrics += zs.rows
        for task, message in zs.failures.items():
            say(f"zero-shot task {task} failed (other tasks kept): {message}")
    result.metrics += [
        {"kind": "timing", "dataset": "-", "metric": "eval_seconds",
         "value": time.perf_counter() - started},
        {"kind": "memory", "dataset": "-", "metric": "peak_mb",
         "value": environment.peak_memory_mb(device)},
    ]
    return result


def save_model(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save the (pruned) model as safetensors with its tokenizer, loadable by transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def store_result(store: Store, run_id: int, result: RunResult) -> None:
    """Write all results and mark the run done, atomically."""
    with store.transaction() as con:
        store.add_metrics(run_id, result.metrics, con=con)
        store.add_layer_stats(run_id, result.layer_stats, con=con)
        con.execute("UPDATE runs SET status = 'done', finished_at = ?, error = NULL, "
                    "progress = NULL WHERE id = ?", [datetime.now(), run_id])


def create_run(store: Store, spec: PruneSpec, status: str = "queued") -> int:
    """Insert a run row for ``spec``."""
    target = spec.target()
    return store.create_run(kind=spec.kind, model=spec.model, method=spec.method,
                            sparsity=target.fraction, pattern=target.pattern,
                            spec=spec.to_dict(), identity=spec.identity(),
                            status=status)


def run_and_store(store: Store, run_id: int, spec: PruneSpec, progress: ProgressFn = _quiet,
                  say: Callable[[str], None] = log.info) -> RunResult:
    """Execute a stored run and record its outcome (failed runs keep their error)."""
    store.update_run(run_id, status="running", started_at=datetime.now(),
                     environment=environment.describe(spec.device))
    try:
        result = execute(spec, progress, say)
    except Exception as exc:
        store.update_run(run_id, status="failed", finished_at=datetime.now(), progress=None,
                         error=f"{type(exc).__name__}: {exc}")
        log.debug(traceback.format_exc())
        raise
    store_result(store, run_id, result)
    return result
