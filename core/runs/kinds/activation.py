"""Run kind ``activation`` (nothing is stored here).

* :class:`~core.runs.specs.ActivationSpec`: CoreInfer with one kept fraction, or
  the sparsity-levels method with one kept fraction per block, evaluated on lm-eval tasks (through
  :func:`core.activation.coreinfer_lm`: multiple-choice continuations are scored sparse after the
  context pre-fill, generation tasks generate sparse) and/or perplexity (the first half of each
  window is pre-filled, dense, and selects the core neurons; the second half is scored sparse).
The helpers here (loading, task scoring, split perplexity) also serve the ``search`` kind.

The kept fraction reported as "actual sparsity" is always measured by the CoreInfer hooks during
the sparse (decode) forwards of the evaluation itself, never copied from the parameter.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import field_validator

from core import config
from core.engine import data, devices, environment, models
from core.engine.activation import (
    CoreInferHandle,
    CoreInferStats,
    apply_coreinfer,
    coreinfer_lm,
    split_loglikelihood,
)
from core.engine.adapters import get_adapter
from core.engine.evaluate import zeroshot
from core.engine.evaluate.perplexity import vocab_size, windows
from core.engine.masks import Selection
from core.engine.plan import Work
from core.runs import costs, placement, preflight
from core.runs.kinds.prune import perplexity_said, perplexity_status
from core.runs.progress import Stage
from core.runs.registry import register_kind
from core.runs.results import ProgressFn, RunResult, Say
from core.runs.specs import (
    DTYPE_HELP,
    LIMITS,
    Device,
    Dtype,
    SpecModel,
    check_block_range,
    check_fractions,
    device_field,
    device_problems,
    field_label,
    fraction,
    labelled,
    model_problems,
    source_problems,
    task_problems,
    valid_block_range,
    whole,
)

log = logging.getLogger(__name__)


ACTIVATION_METHODS = ("coreinfer", "sparsity-levels")


class ActivationSpec(SpecModel):
    """CoreInfer (one kept fraction) or sparsity levels (one kept fraction per block), evaluated
    on lm-eval tasks and/or perplexity.  No weights change; the actual (measured) kept fraction
    is stored, never the parameter.  A parameter search stores its full-set runs as activation
    runs with ``config`` / ``goal`` / ``trial`` / ``search`` set."""

    kind: Literal["activation"] = "activation"
    model: str = labelled(config.DEFAULT_MODEL, "Model")
    method: str = labelled("coreinfer", "Method",
                           choices=list(ACTIVATION_METHODS))
    sparsity: float = fraction(0.4, "Kept fraction (CoreInfer sparsity)",
                               form_label="Kept fraction (sparsity)",
                               help="Fraction of FFN neurons KEPT (CoreInfer's 'sparsity'; 0.4 = "
                                    "40% computed).")
    token_sparsity: float = fraction(0.2, "Token sparsity",
                                     help="Share of each token's positive activations it votes "
                                          "for (CoreInfer's default 0.2).")
    levels: list[float] | None = labelled(None, "Levels", short="per-block levels")
    selection: Selection = labelled(
        "reference", "Selection rule",
        help="How neurons chosen by equally many tokens are ranked: reference = CoreInfer's "
             "code (torch.argsort, not stable); exact = the lower index first.",
        short="{value} selection")
    block_range: list[int] | None = labelled(None, "Block range",
                                             short="blocks {value[0]}–{value[1]}")
    tasks: list[str] = labelled(list, "Tasks")  # lm-eval task names
    num_fewshot: int = whole(0, 0, 64, "Few-shot examples")
    limit: int | None = whole(None, 1, 10**7, "Examples per task",
                              form_label="Examples per task (0 = all)")
    metric: str = labelled("", "Metric")  # '' = the task's headline metric
    ppl_datasets: list[str] = labelled(list, "Evaluation datasets")
    ppl_seqlen: int = whole(256, *LIMITS["seqlen"], "Perplexity seqlen",
                            form_label="Window length (tokens)")
    max_windows: int | None = whole(16, *LIMITS["max_windows"], "Max windows",
                                    form_label="Max windows (0 = all)")
    batch_size: int = whole(1, *LIMITS["batch_size"], "Batch size")
    dtype: Dtype = labelled("auto", "Dtype", form_label="Weights dtype", short="{value}",
                            help=DTYPE_HELP)
    device: Device = device_field()
    trust_remote_code: bool = labelled(False, "Trust remote code")
    config: str = ""  # set by a search: CoreInfer / best / AVG ('' = not part of a search)
    goal: float | None = None  # set by a search: its goal mean kept fraction
    trial: int | None = None  # set by a search: the trial the best config came from
    search: int | None = None  # set by a search: the search run's id
    #: The data protocol of its perplexity windows (``core.engine.data.PROTOCOL``).
    data_protocol: int = data.PROTOCOL

    SYSTEM_FIELDS = ("kind", "config", "goal", "trial", "search", "data_protocol")
    LABEL_FIELDS = ("token_sparsity", "levels", "block_range", "selection", "dtype")

    def label_words(self) -> list[str]:
        """The kept fraction (its own column in weight-pruning labels), then the fields that
        differ from their defaults, and the search configuration it was chosen as."""
        words = [f"kept {self.sparsity:g}"] if self.levels is None else []
        words += super().label_words()
        return words + ([f"{self.config} config"] if self.config else [])

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in ACTIVATION_METHODS:
            raise ValueError(f"Method: {value!r} is unknown; choose one of "
                             f"{', '.join(ACTIVATION_METHODS)}.")
        return value

    @field_validator("levels")
    @classmethod
    def _level_fractions(cls, value: list[float] | None) -> list[float] | None:
        check_fractions("Levels", value, "are not kept fractions; each level must be a number "
                        "between 0 and 1.")
        return value

    _block_range = field_validator("block_range")(check_block_range)

    def cross_problems(self) -> list[str]:
        errors = []
        if self.method == "sparsity-levels" and not self.levels:
            errors.append("Levels: give one kept fraction per converted block, e.g. "
                          "0.35, 0.4, 0.45 (each between 0 and 1).")
        elif (self.method == "sparsity-levels" and valid_block_range(self.block_range)
              and len(self.levels) != self.block_range[1] - self.block_range[0]):
            errors.append(f"Levels: {len(self.levels)} values for the block range "
                          f"{self.block_range}; give one per converted block "
                          f"({self.block_range[1] - self.block_range[0]}).")
        if not self.tasks and not self.ppl_datasets:
            errors.append("Evaluation: choose at least one lm-eval task or perplexity dataset.")
        return errors

    def machine_problems(self) -> list[str]:
        errors = model_problems(self.model)
        if self.tasks:
            errors += task_problems(self.tasks)
        for name in self.ppl_datasets:
            errors += source_problems("Evaluation dataset", name)
            errors += preflight.evaluation_text_problems("Evaluation dataset", name,
                                                         self.ppl_seqlen)
        device = device_problems(self.device)
        windows = ({field_label(type(self).model_fields["ppl_seqlen"]): self.ppl_seqlen}
                   if self.ppl_datasets else {})
        return errors + device + preflight.model_fit_problems(
            self.model, need="coreinfer", windows=windows,
            work=None if device else self.work(), trust_remote_code=self.trust_remote_code)

    def work(self) -> Work:
        """What this run does, in the memory plan's terms: the whole model, evaluated."""
        return whole_model_work(self.model, self.dtype, self.device, self.batch_size)

    def summary(self, model: str) -> str:
        what = (f"CoreInfer, kept fraction {self.sparsity}" if self.method == "coreinfer"
                else f"sparsity levels {', '.join(f'{v:g}' for v in self.levels or [])}")
        return f"{what} on {model}"

    def identity(self) -> dict[str, Any]:
        values = self.to_dict()
        for key in ("device", "batch_size", "search"):
            values.pop(key)
        values.pop("levels" if self.method == "coreinfer" else "sparsity")
        return values


# -- shared pieces ---------------------------------------------------------------------------------
def whole_model_work(model: str, dtype: str, device: str, batch_size: int) -> Work:
    """An activation run or search in the memory plan's terms: the whole model on the device
    (CoreInfer's hooks need every block there: it is never offloaded), evaluated."""
    return Work(dtype=dtype, device=devices.planning_device(device), zero_shot=True,
                batch_size=batch_size, offload=False, converts=models.converts_first(model))


def load(spec: Any, progress: ProgressFn, say: Say) -> tuple[Any, Any]:
    """The spec's model and tokenizer, whole on its device, once its memory plan fits what is
    free now."""
    progress("loading model", 0, 1)
    say(f"loading {spec.model} ({spec.dtype}) on {spec.device}")
    placed = placement.place(spec.model, spec.dtype, spec.device, spec.work(), say,
                             spec.trust_remote_code)
    return placement.whole_model(placed, placed.folder, say)


def converted_range(block_range: Sequence[int] | None, n_blocks: int) -> tuple[int, int]:
    """``[start, end)`` of the converted blocks, checked against the model."""
    start, end = block_range or (0, n_blocks)
    if not 0 <= start < end <= n_blocks:
        raise ValueError(f"Block range [{start}, {end}) does not fit the model: it has "
                         f"{n_blocks} blocks, so give 0 <= start < end <= {n_blocks}.")
    return int(start), int(end)


def pick_metric(rows: list[dict[str, Any]], task: str, wanted: str = "") -> dict[str, Any]:
    """The headline metric row of ``task`` among lm-eval's rows (``wanted`` when named)."""
    mine = [r for r in rows if r["dataset"] == task and r.get("status", "ok") == "ok"]
    names = [r["metric"] for r in mine]

    def named(name: str) -> dict[str, Any] | None:
        """The row of metric ``name``, else of ``name`` under a filter ('exact_match
        (remove_whitespace)', as triviaqa reports it)."""
        exact = [r for r in mine if r["metric"] == name]
        filtered = [r for r in mine if r["metric"].partition(" (")[0] == name]
        return (exact or filtered or [None])[0]

    if wanted:
        row = named(wanted)
        if row is None:
            raise ValueError(f"Metric {wanted!r} is not reported by {task}; it reports "
                             f"{', '.join(names) or 'nothing'}.")
        return row
    for name in zeroshot.HEADLINE:
        row = named(name)
        if row is not None:
            return row
    if not mine:
        raise ValueError(f"lm-eval returned no score for {task}")
    return mine[0]


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[str], num_fewshot: int,
                   limit: int | None, batch_size: int, device: str) -> zeroshot.ZeroShotResult:
    """lm-eval on a CoreInfer-converted model, with causal (sparse) multiple-choice scores."""
    lm = coreinfer_lm(model, tokenizer, batch_size=batch_size, device=device)
    return zeroshot.evaluate(model, tokenizer, tasks, num_fewshot, limit, batch_size, device,
                             lm=lm)


@torch.inference_mode()
def split_perplexity(model: Any, ids: torch.Tensor, seqlen: int, max_windows: int | None,
                     progress: ProgressFn | None = None
                     ) -> tuple[float | None, int, int, list[float]]:
    """CoreInfer perplexity: per window, the first half is pre-filled (dense, selects the core
    neurons) and the second half scored as cached forwards (sparse).  Returns (ppl, windows,
    scored tokens, each window's mean NLL); ppl is None when the loss is not finite."""
    chunks = windows(ids, seqlen, max_windows)
    prefix = seqlen // 2
    nll, tokens, per_window = 0.0, 0, []
    if progress:
        progress("perplexity", 0, chunks.shape[0])
    for i, window in enumerate(chunks):
        logprob, _ = split_loglikelihood(model, window[:prefix].tolist(),
                                         window[prefix:].tolist())
        nll -= logprob
        tokens += seqlen - prefix
        per_window.append(-logprob / (seqlen - prefix))
        if progress:
            progress("perplexity", i + 1, chunks.shape[0])
    mean = nll / max(tokens, 1)
    value = math.exp(mean) if math.isfinite(mean) and mean < 700 else None
    return value, int(chunks.shape[0]), tokens, per_window


def combine_stats(parts: Sequence[CoreInferStats]) -> dict[str, Any]:
    """Kept fractions over several measured evaluations, weighted by their decode tokens
    (exactly what one meter over all of them would report)."""
    per_block: dict[int, float | None] = {}
    blocks = parts[0].blocks if parts else []
    for block in blocks:
        weighted = [(p.kept_per_block[block], p.decode_tokens) for p in parts
                    if p.kept_per_block.get(block) is not None and p.decode_tokens]
        total = sum(w for _, w in weighted)
        per_block[block] = sum(v * w for v, w in weighted) / total if total else None
    known = [v for v in per_block.values() if v is not None]
    return {"kept_per_block": per_block,
            "kept_fraction": sum(known) / len(known) if known and len(known) == len(blocks)
            else None,
            "decode_tokens": sum(p.decode_tokens for p in parts)}


def _stats_rows(stats: CoreInferStats, dataset: str) -> list[dict[str, Any]]:
    rows = stats.metric_rows()
    for row in rows:
        row["dataset"] = dataset
    return rows


# -- kind 'activation' -----------------------------------------------------------------------------
@torch.inference_mode()
def execute_activation(spec: ActivationSpec, progress: ProgressFn, say: Say) -> RunResult:
    """CoreInfer / sparsity levels on the spec's tasks and perplexity datasets."""
    model, tokenizer = load(spec, progress, say)
    n_blocks = len(get_adapter(model).blocks(model))
    start, end = converted_range(spec.block_range, n_blocks)
    result = RunResult()
    started = time.perf_counter()
    handle = apply_coreinfer(model, sparsity=spec.sparsity, token_sparsity=spec.token_sparsity,
                             start=start, end=end,
                             levels=spec.levels if spec.method == "sparsity-levels" else None,
                             selection=spec.selection)
    what = (f"kept fraction {spec.sparsity}" if spec.method == "coreinfer"
            else f"levels {', '.join(f'{v:g}' for v in handle.fractions.values())}")
    say(f"{spec.method}: {what}, token sparsity {spec.token_sparsity}, blocks {start}..{end - 1}")
    try:
        measured = _sparse_tasks(model, tokenizer, spec, handle, result, progress, say)
        measured += _sparse_perplexity(model, tokenizer, spec, handle, result, progress, say)
    finally:
        handle.remove()
    overall = combine_stats(measured)
    acted = overall["decode_tokens"] > 0
    result.metrics += [
        {"kind": "activation", "dataset": "-", "metric": "actual_sparsity",
         "value": overall["kept_fraction"] if acted else None,
         "status": "ok" if acted and overall["kept_fraction"] is not None else "missing",
         "note": None if acted else "CoreInfer never ran a sparse (decode) forward"},
        {"kind": "activation", "dataset": "-", "metric": "decode_tokens",
         "value": float(overall["decode_tokens"])},
        {"kind": "timing", "dataset": "-", "metric": "eval_seconds",
         "value": time.perf_counter() - started},
        {"kind": "memory", "dataset": "-", "metric": "peak_mb",
         "value": environment.peak_memory_mb(spec.device)},
    ]
    result.layer_stats += _block_rows(handle.fractions, overall)
    return result


def _sparse_tasks(model: Any, tokenizer: Any, spec: ActivationSpec, handle: CoreInferHandle,
                  result: RunResult, progress: ProgressFn, say: Say) -> list[CoreInferStats]:
    """Each lm-eval task scored on the converted model, its kept fraction measured."""
    measured: list[CoreInferStats] = []
    for i, task in enumerate(spec.tasks):
        progress(f"task {task}", i, len(spec.tasks))
        handle.reset_stats()
        zs = evaluate_tasks(model, tokenizer, [task], spec.num_fewshot, spec.limit,
                            spec.batch_size, spec.device)
        stats = handle.stats()
        measured.append(stats)
        if task in zs.failures:
            say(f"task {task} failed (other tasks kept): {zs.failures[task]}")
            result.metrics.append({"kind": "task", "dataset": task, "metric": "acc",
                                   "value": None, "status": "missing",
                                   "note": f"task failed: {zs.failures[task][:500]}"})
            continue
        row = dict(pick_metric(zs.rows, task, spec.metric), kind="task")
        result.metrics.append(row)
        result.metrics += [r for r in _stats_rows(stats, task)
                           if r["metric"] == "actual_sparsity"]
        say(f"{task}: {row['metric']} {row['value']:.4f}; measured kept fraction "
            + (f"{stats.kept_fraction:.4f}" if stats.acted else "n/a (CoreInfer never "
               "decoded: every answer was scored by the dense pre-fill)"))
    if spec.tasks:
        progress(f"task {spec.tasks[-1]}", len(spec.tasks), len(spec.tasks))
    return measured


def _sparse_perplexity(model: Any, tokenizer: Any, spec: ActivationSpec,
                       handle: CoreInferHandle, result: RunResult, progress: ProgressFn,
                       say: Say) -> list[CoreInferStats]:
    """Split perplexity (dense pre-fill, sparse second half) on each dataset."""
    measured: list[CoreInferStats] = []
    vocab = vocab_size(model)
    for name in spec.ppl_datasets:
        handle.reset_stats()
        progress(f"perplexity {name}", 0, 1)  # the stage starts with reading the text
        ids = data.evaluation_ids(tokenizer, name, spec.ppl_seqlen, spec.max_windows)
        value, n_windows, n_tokens, nlls = split_perplexity(
            model, ids, spec.ppl_seqlen, spec.max_windows,
            lambda s, d, t, n=name: progress(f"perplexity {n}", d, t))
        if value is not None:  # the windows give the perplexity its interval
            result.windows.append({"dataset": name, "nlls": nlls})
        stats = handle.stats()
        measured.append(stats)
        status, why = perplexity_status(value, vocab)
        result.metrics.append({
            "kind": "activation", "dataset": name, "metric": "ppl", "value": value,
            "n_samples": n_tokens, "status": status,
            "note": (f"{why}; " if status == "collapsed" else "")
                    + f"{n_windows} windows of {spec.ppl_seqlen}: first half pre-filled "
                    "(dense, selects the core neurons), second half scored sparse"})
        result.metrics += [r for r in _stats_rows(stats, name)
                           if r["metric"] == "actual_sparsity"]
        say(f"{name}: CoreInfer {perplexity_said(status, value, vocab)} over {n_windows} windows")
    return measured


def _block_rows(configured: dict[int, float], overall: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for block, configured_fraction in configured.items():
        rows.append({"block": block, "layer": "ffn", "stat": "kept_fraction",
                     "value": overall["kept_per_block"].get(block)})
        rows.append({"block": block, "layer": "ffn", "stat": "configured_fraction",
                     "value": configured_fraction})
    rows.append({"block": None, "layer": "model", "stat": "kept_fraction",
                 "value": overall["kept_fraction"]})
    return rows


def stage_plan(spec: ActivationSpec) -> list[Stage]:
    """The stages ``execute_activation`` reports, in order, with their measured costs
    (``core.runs.costs``)."""
    stages = [Stage("loading model", costs.LOAD_S)]
    if spec.tasks:
        stages.append(Stage("task", costs.COREINFER_WARMUP_S + sum(
            costs.coreinfer_s(t, spec.limit) for t in spec.tasks), "task"))
    window_k = costs.windows(spec.max_windows) * spec.ppl_seqlen / 1000
    return stages + [Stage(f"perplexity {name}",
                           costs.PPL_FIXED_S + costs.SPLIT_PPL_S_PER_KTOKEN * window_k, "window")
                     for name in spec.ppl_datasets]


register_kind("activation", ActivationSpec, execute_activation, title="Activation sparsity",
              stages=stage_plan)
