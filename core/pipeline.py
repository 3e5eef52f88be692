"""Execute one run spec: load, prune, evaluate; then store every result in one transaction.

Results are gathered in memory and written together with the final status, so a cancelled or
crashed run never leaves half of its numbers behind.
"""

from __future__ import annotations

import json
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

from core import data, environment, models, owl, zeroshot
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
class ChildRun:
    """A run a search stores beside itself (its full-set CoreInfer / best / AVG runs)."""

    spec: Any  # an ActivationSpec; its ``search`` is set to the parent's id when stored
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)  # search trials (kind 'search')
    children: list[ChildRun] = field(default_factory=list)
    spec_updates: dict[str, Any] = field(default_factory=dict)  # spec values resolved by the run


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
    if spec.kind in ("activation", "search"):
        from core import activation_runs

        run = (activation_runs.execute_activation if spec.kind == "activation"
               else activation_runs.execute_search)
        return run(spec, progress, say)
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
            block_targets = owl_block_targets(model, calibration, spec, device)
            result.layer_stats += [{"block": b, "layer": "block", "stat": "owl_target",
                                    "value": t} for b, t in enumerate(block_targets)]
            say("OWL targets per block: " + ", ".join(f"{t:.3f}" for t in block_targets))
        say(f"pruning with {spec.method} to {target.label}")
        report = prune_model(model, method, target, calibration, device=device,
                             block_range=tuple(spec.block_range) if spec.block_range else None,
                             progress=progress, block_targets=block_targets)
        seconds = time.perf_counter() - started
        say(f"pruned in {seconds:.1f} s; measured sparsity {report.overall:.4f}")
        result.layer_stats += layer_stat_rows(report)
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


def save_model(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save the (pruned) model as safetensors with its tokenizer, loadable by transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def store_result(store: Store, run_id: int, result: RunResult) -> None:
    """Write all results (a search's trials and full-set runs too) and mark the run done,
    atomically."""
    with store.transaction() as con:
        store.add_metrics(run_id, result.metrics, con=con)
        store.add_layer_stats(run_id, result.layer_stats, con=con)
        store.add_search_trials(run_id, result.trials, con=con)
        for child in result.children:
            child.spec.search = run_id
            child_id = create_run(store, child.spec, status="done", con=con)
            store.add_metrics(child_id, child.metrics, con=con)
            store.add_layer_stats(child_id, child.layer_stats, con=con)
            con.execute("UPDATE runs SET started_at = ?, finished_at = ? WHERE id = ?",
                        [datetime.now(), datetime.now(), child_id])
        if result.spec_updates:
            row = con.execute("SELECT spec FROM runs WHERE id = ?", [run_id]).fetchone()
            stored = {**json.loads(row[0]), **result.spec_updates}
            con.execute("UPDATE runs SET spec = ? WHERE id = ?",
                        [json.dumps(stored, sort_keys=True, default=str), run_id])
        con.execute("UPDATE runs SET status = 'done', finished_at = ?, error = NULL, "
                    "progress = NULL WHERE id = ?", [datetime.now(), run_id])


def create_run(store: Store, spec: PruneSpec, status: str = "queued", con: Any = None) -> int:
    """Insert a run row for ``spec`` (activation kinds: no weight sparsity, pattern
    'activation'; their measured kept fraction is a metric)."""
    if spec.kind != "prune":
        return store.create_run(kind=spec.kind, model=spec.model, method=spec.method,
                                sparsity=None, pattern="activation", spec=spec.to_dict(),
                                identity=spec.identity(), status=status, con=con)
    target = spec.target()
    return store.create_run(kind=spec.kind, model=spec.model, method=spec.method,
                            sparsity=target.fraction, pattern=target.pattern,
                            spec=spec.to_dict(), identity=spec.identity(),
                            status=status, con=con)


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
