"""Run kind ``search``: seed 003's parameter search of the sparsity levels, compared with
CoreInfer (nothing is stored here; the full-set runs come back as child runs)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from core import config
from core.engine import environment
from core.engine.activation import (
    CoreInferStats,
    apply_coreinfer,
    average_levels,
    collect_scores,
    search_configs,
)
from core.engine.adapters import get_adapter
from core.engine.evaluate import zeroshot
from core.engine.plan import Work
from core.runs import costs, preflight
from core.runs.kinds.activation import (
    ActivationSpec,
    converted_range,
    evaluate_tasks,
    load,
    pick_metric,
    whole_model_work,
)
from core.runs.progress import Stage
from core.runs.registry import register_kind
from core.runs.results import ChildRun, ProgressFn, RunResult, Say
from core.runs.specs import (
    DTYPE_HELP,
    LIMITS,
    Device,
    Dtype,
    SpecModel,
    check_block_range,
    device_field,
    device_problems,
    fraction,
    labelled,
    model_problems,
    task_problems,
    whole,
)


class SearchSpec(SpecModel):
    """Seed 003's parameter search for the sparsity-levels method on one lm-eval task.

    Neuron scores come from ``n_calibration`` prompts of the task; for each ``sum_weight``
    (``count_weight = 1 - sum_weight``) the threshold whose mean level over the converted blocks
    is within ``tolerance`` of the goal is found by bisection; each configuration is scored on
    the first ``n_search`` examples; the best one, AVG (element-wise mean of all level vectors)
    and CoreInfer then run on the full set (``full_limit`` examples, None = all).  The goal is
    either ``goal`` (a mean kept fraction) or ``goal_factor`` x CoreInfer's measured kept
    fraction (in (0, 1]: 1.0 = the same actual sparsity, 0.9 = "10% less"); the goal itself is
    a kept fraction in the open range (0, 1).  With ``goal_factor`` the run fills in ``goal``.
    """

    kind: Literal["search"] = "search"
    model: str = labelled(config.DEFAULT_MODEL, "Model")
    task: str = labelled("sb_everyday", "Task")
    goal: float | None = fraction(0.4, "Goal", below_one=True,
                                  form_label="Goal (mean kept fraction)")
    goal_factor: float | None = fraction(None, "Goal factor",
                                         form_label="Factor of CoreInfer's kept fraction")
    coreinfer_sparsity: float = fraction(0.4, "CoreInfer kept fraction",
                                         help="CoreInfer's 'sparsity' parameter for the "
                                              "comparison (seed 003: 0.4).")
    token_sparsity: float = fraction(0.2, "Token sparsity")
    sum_weights: list[float] = labelled(lambda: [0.15, 0.2, 0.25, 0.3, 0.4, 0.45, 0.55, 0.6],
                                        "Sum weights")
    top_k: int = whole(100, 1, 10**6, "Top-k",
                       help="The sum score is divided by the top_k-th largest sum.")
    n_calibration: int = whole(16, *LIMITS["samples"], "Calibration prompts")
    n_search: int = whole(100, 1, 10**7, "Search samples",
                          help="Examples each configuration is scored on.")
    full_limit: int | None = whole(None, 1, 10**7, "Full-set limit",
                                   form_label="Full-set limit (0 = all)")
    block_range: list[int] | None = labelled(None, "Block range")
    num_fewshot: int = whole(0, 0, 64, "Few-shot examples")
    metric: str = labelled("", "Metric")  # '' = the task's headline metric
    tolerance: float = Field(0.005, gt=0, le=0.1, title="Tolerance")
    batch_size: int = whole(1, *LIMITS["batch_size"], "Batch size")
    dtype: Dtype = labelled("auto", "Dtype", form_label="Weights dtype", help=DTYPE_HELP)
    device: Device = device_field()
    trust_remote_code: bool = labelled(False, "Trust remote code")

    @property
    def method(self) -> str:
        return "sparsity-levels"

    @field_validator("task")
    @classmethod
    def _one_task(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Task: give one lm-eval task name, e.g. sb_everyday or "
                             "truthfulqa_gen.")
        return value

    @field_validator("sum_weights")
    @classmethod
    def _sum_weights(cls, value: list[float]) -> list[float]:
        errors = []
        if not value:
            errors.append("Sum weights: give at least one value between 0 and 1, e.g. "
                          "0.15, 0.3, 0.45.")
        bad = [w for w in value if not 0 <= w <= 1]
        if bad:
            errors.append(f"Sum weights: {bad} are outside [0, 1]; each sum weight is a "
                          "number between 0 and 1 (count weight = 1 - sum weight).")
        if len(set(value)) != len(value):
            errors.append("Sum weights: a value is repeated; give each value once.")
        if len(value) > 50:
            errors.append(f"Sum weights: {len(value)} values; at most 50.")
        if errors:
            raise ValueError("\n".join(errors))
        return value

    _block_range = field_validator("block_range")(check_block_range)

    def cross_problems(self) -> list[str]:
        if self.goal_factor is None and self.goal is None:
            return ["Goal (mean kept fraction): give one, or a Factor of CoreInfer's kept "
                    "fraction (of its measured kept fraction)."]
        return []

    def machine_problems(self) -> list[str]:
        device = device_problems(self.device)
        return (model_problems(self.model) + task_problems([self.task], label="Task") + device
                + preflight.model_fit_problems(
                    self.model, need="coreinfer", windows={},
                    work=None if device else self.work(),
                    trust_remote_code=self.trust_remote_code))

    def work(self) -> Work:
        """The whole model on the device, evaluated (``activation.whole_model_work``)."""
        return whole_model_work(self.model, self.dtype, self.device, self.batch_size)

    def summary(self, model: str) -> str:
        goal = (f"goal {self.goal}" if self.goal_factor is None
                else f"goal {self.goal_factor} x CoreInfer's measured kept fraction")
        return f"parameter search on {self.task} ({goal}) with {model}"

    def identity(self) -> dict[str, Any]:
        values = self.to_dict()
        for key in ("device", "batch_size"):
            values.pop(key)
        if self.goal_factor is not None:
            values.pop("goal")  # resolved from CoreInfer's measured kept fraction at run time
        return values


def task_prompts(task: str, n: int) -> list[str]:
    """The prompts (``doc_to_text``) of the last ``n`` examples of ``task``'s evaluation split:
    apart from the first examples that score the configurations whenever the split has room."""
    from lm_eval.tasks import get_task_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        found = get_task_dict([task], zeroshot.task_manager(None))
    if task not in found:
        raise ValueError(f"{task!r} is a group of tasks; a search needs one task")
    obj = found[task]
    if obj.has_test_docs():
        docs = list(obj.test_docs())
    elif obj.has_validation_docs():
        docs = list(obj.validation_docs())
    else:
        raise ValueError(f"task {task} has no test or validation examples")
    if not docs:
        raise ValueError(f"task {task} has no examples")
    return [str(obj.doc_to_text(doc)) for doc in docs[-n:]]


@dataclass
class Scored:
    row: dict[str, Any]  # the headline metric row (kind 'task')
    stats: CoreInferStats


def score_config(model: Any, tokenizer: Any, spec: SearchSpec, start: int, end: int,
                 limit: int | None, metric: str, levels: Sequence[float] | None = None,
                 sparsity: float | None = None) -> Scored:
    """One configuration on ``limit`` examples of the task, measured by the CoreInfer hooks."""
    handle = apply_coreinfer(model, sparsity=sparsity if sparsity is not None else 0.4,
                             token_sparsity=spec.token_sparsity, start=start, end=end,
                             levels=levels)
    try:
        zs = evaluate_tasks(model, tokenizer, [spec.task], spec.num_fewshot, limit,
                            spec.batch_size, spec.device)
        stats = handle.stats()
    finally:
        handle.remove()
    if spec.task in zs.failures:
        raise RuntimeError(f"task {spec.task} failed: {zs.failures[spec.task]}")
    return Scored(dict(pick_metric(zs.rows, spec.task, metric), kind="task"), stats)


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the highest score (the first one on ties); every task metric of seed 003
    is higher-is-better."""
    scored = [t for t in trials if t["value"] is not None and math.isfinite(t["value"])]
    if not scored:
        raise RuntimeError("no search configuration produced a score")
    return max(scored, key=lambda t: (t["value"], -t["trial"]))


@torch.inference_mode()
def execute_search(spec: SearchSpec, progress: ProgressFn, say: Say) -> RunResult:
    """Seed 003's search, end to end.

    1. per-block neuron scores from ``n_calibration`` prompts of the task (dense model);
    2. CoreInfer (``coreinfer_sparsity``) on the full set: the reference, and the measured kept
       fraction a relative goal is taken from;
    3. for each sum weight the bisection threshold whose mean level over the converted blocks is
       within ``tolerance`` of the goal; each configuration scored on ``n_search`` examples with
       its kept fraction measured -> the search trials;
    4. the best configuration and AVG (element-wise mean of all level vectors) on the full set.
    CoreInfer, best and AVG are stored as activation runs of this search (``config`` set), so
    "% of CoreInfer" comes out of ``tables.final_summary`` as for the published rows.
    """
    model, tokenizer = load(spec, progress, say)
    n_blocks = len(get_adapter(model).blocks(model))
    start, end = converted_range(spec.block_range, n_blocks)
    started = time.perf_counter()

    progress("calibration scores", 0, 1)
    prompts = task_prompts(spec.task, spec.n_calibration)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    scores = collect_scores(model, ids, top_k=spec.top_k)
    say(f"neuron scores from {len(prompts)} prompts of {spec.task} "
        f"({sum(len(i) for i in ids)} tokens), top_k {spec.top_k}")

    progress("CoreInfer on the full set", 0, 1)
    core = score_config(model, tokenizer, spec, start, end, spec.full_limit, spec.metric,
                        sparsity=spec.coreinfer_sparsity)
    metric = core.row["metric"]
    core_actual = core.stats.kept_fraction if core.stats.acted else None
    say(f"CoreInfer ({spec.coreinfer_sparsity}): {metric} {core.row['value']:.4f}, measured "
        f"kept fraction {core_actual if core_actual is not None else 'n/a'}")
    goal = resolve_goal(spec, core_actual, say)

    configs = search_configs(scores, spec.sum_weights, goal, spec.top_k, spec.tolerance,
                             blocks=list(range(start, end)))
    trials = [run_trial(model, tokenizer, spec, (start, end), i, cfg, metric, progress, say)
              for i, cfg in enumerate(configs)]
    finals = final_runs(model, tokenizer, spec, (start, end), trials, metric, progress)
    say(f"best (config {best_trial(trials)['trial']}): {finals['best'].row['value']:.4f}; AVG: "
        f"{finals['AVG'].row['value']:.4f}; CoreInfer: {core.row['value']:.4f}")

    result = RunResult(trials=trials)
    result.children += child_runs(spec, {"CoreInfer": core, **finals}, trials, goal, metric,
                                  (start, end))
    result.metrics += [
        {"kind": "search", "dataset": spec.task, "metric": "goal", "value": goal},
        {"kind": "search", "dataset": spec.task, "metric": "coreinfer_actual_sparsity",
         "value": core_actual, "status": "ok" if core_actual is not None else "missing"},
        {"kind": "timing", "dataset": "-", "metric": "search_seconds",
         "value": time.perf_counter() - started},
        {"kind": "memory", "dataset": "-", "metric": "peak_mb",
         "value": environment.peak_memory_mb(spec.device)},
    ]
    if spec.goal_factor is not None:
        result.spec_updates["goal"] = goal
    progress("AVG on the full set", 1, 1)
    return result


def resolve_goal(spec: SearchSpec, core_actual: float | None, say: Say) -> float:
    """The goal mean kept fraction: fixed, or a factor of CoreInfer's measured one."""
    if spec.goal_factor is None:
        return float(spec.goal)
    if core_actual is None:
        raise RuntimeError("CoreInfer never ran a sparse (decode) forward on this task, so "
                           "there is no measured kept fraction to set the goal from; give "
                           "a fixed goal instead")
    goal = round(spec.goal_factor * core_actual, 4)
    say(f"goal = {spec.goal_factor} x CoreInfer's measured {core_actual:.4f} = {goal}")
    return goal


def run_trial(model: Any, tokenizer: Any, spec: SearchSpec, blocks: tuple[int, int], i: int,
              cfg: Any, metric: str, progress: ProgressFn, say: Say) -> dict[str, Any]:
    """Score configuration ``i`` on the search samples: one search-trial row."""
    progress("search configurations", i, len(spec.sum_weights))
    scored = score_config(model, tokenizer, spec, *blocks, spec.n_search, metric,
                          levels=cfg.levels)
    actual = scored.stats.kept_fraction if scored.stats.acted else None
    note = None if cfg.reached else (f"the levels' mean {cfg.mean:.4f} misses the goal by "
                                     f"more than {spec.tolerance}")
    trial = {
        "trial": i + 1, "label": None,
        "params": [round(cfg.sum_weight, 6), round(cfg.count_weight, 6),
                   round(cfg.threshold, 4), cfg.top_k],
        "levels": list(cfg.levels), "actual_sparsity": actual, "metric": metric,
        "value": scored.row["value"], "n_samples": scored.row.get("n_samples"),
        "note": note,
    }
    say(f"config {i + 1} {trial['params']}: mean level {cfg.mean:.4f}, measured "
        f"{actual if actual is not None else 'n/a'}, {metric} {scored.row['value']:.4f}")
    return trial


def final_runs(model: Any, tokenizer: Any, spec: SearchSpec, blocks: tuple[int, int],
               trials: list[dict[str, Any]], metric: str, progress: ProgressFn
               ) -> dict[str, Scored]:
    """The best configuration and AVG scored on the full set."""
    progress("search configurations", len(trials), len(trials))
    progress("best configuration on the full set", 0, 1)
    best = score_config(model, tokenizer, spec, *blocks, spec.full_limit, metric,
                        levels=best_trial(trials)["levels"])
    progress("AVG on the full set", 0, 1)
    avg = score_config(model, tokenizer, spec, *blocks, spec.full_limit, metric,
                       levels=average_levels([t["levels"] for t in trials]))
    return {"best": best, "AVG": avg}


def child_runs(spec: SearchSpec, scored: dict[str, Scored], trials: list[dict[str, Any]],
               goal: float, metric: str, blocks: tuple[int, int]) -> list[ChildRun]:
    """CoreInfer, best and AVG as activation runs of this search (``config`` set)."""
    start, end = blocks
    best = best_trial(trials)
    avg = average_levels([t["levels"] for t in trials])
    common = {"model": spec.model, "token_sparsity": spec.token_sparsity,
              "block_range": spec.block_range, "tasks": [spec.task],
              "num_fewshot": spec.num_fewshot, "limit": spec.full_limit, "metric": metric,
              "batch_size": spec.batch_size, "dtype": spec.dtype, "device": spec.device,
              "trust_remote_code": spec.trust_remote_code, "goal": goal}
    extras = {"CoreInfer": {"method": "coreinfer", "sparsity": spec.coreinfer_sparsity},
              "best": {"method": "sparsity-levels", "trial": best["trial"],
                       "levels": list(best["levels"][start:end])},
              "AVG": {"method": "sparsity-levels", "levels": avg[start:end]}}
    children = []
    for name, extra in extras.items():
        run = scored[name]
        metrics = [run.row, *run.stats.metric_rows()]
        for row in metrics[1:]:
            row["dataset"] = spec.task
        children.append(ChildRun(ActivationSpec(**common, **extra, config=name), metrics,
                                 run.stats.layer_stat_rows()))
    return children


def stage_plan(spec: SearchSpec) -> list[Stage]:
    """The stages ``execute_search`` reports, in order, with their measured costs
    (``core.runs.costs``)."""
    full = costs.coreinfer_s(spec.task, spec.full_limit)
    scores = costs.COREINFER_WARMUP_S + costs.SCORES_S_PER_PROMPT * spec.n_calibration
    return [Stage("loading model", costs.LOAD_S), Stage("calibration scores", scores),
            Stage("CoreInfer on the full set", full),
            Stage("search configurations",
                  len(spec.sum_weights) * costs.coreinfer_s(spec.task, spec.n_search),
                  "configuration"),
            Stage("best configuration on the full set", full),
            Stage("AVG on the full set", full)]


register_kind("search", SearchSpec, execute_search, title="Parameter search", stages=stage_plan)
