"""Run specifications: everything needed to repeat a run, validated before it is queued."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core import config
from core.engine import data
from core.engine.prune.methods import REGISTRY, Target, get_method

DENSE = "dense"
OWL_METHODS = ("magnitude", "wanda", "sparsegpt")
DTYPE_CHOICES = ("float32", "float16", "bfloat16")
LIMITS = {"samples": (1, 4096), "seqlen": (8, 32768), "batch_size": (1, 512),
          "max_windows": (1, 100000)}


class _SpecBase:
    """What every run kind's spec shares: to_dict / from_dict, the run-table columns, and the
    dense baseline (none unless the kind compares with one)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = set(values) - known - {"kind"}
        if unknown:
            raise ValueError(f"unknown spec field(s): {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in known})

    def sparsity_columns(self) -> tuple[float | None, str]:
        """(sparsity, pattern) of the run row: activation kinds change no weights."""
        return None, "activation"

    def baseline(self) -> Any:
        """The dense run this run is compared with (queued with it when missing), or None."""
        return None


@dataclass
class PruneSpec(_SpecBase):
    """Prune a model (or leave it dense) and evaluate its perplexity."""

    model: str = config.DEFAULT_MODEL
    method: str = "wanda"
    sparsity: str = "0.5"  # "0.5", "50%" or N:M like "2:4"
    method_params: dict[str, Any] = field(default_factory=dict)
    calibration: str = config.DEFAULT_TEXT
    samples: int = 32
    seqlen: int = 512
    seed: int = 0
    block_range: list[int] | None = None  # [start, end): blocks outside stay dense
    owl: dict[str, float] | None = None  # OWL layer-wise sparsity: {"M": 5, "lambda": 0.08}
    ppl_datasets: list[str] = field(default_factory=lambda: [config.DEFAULT_TEXT])
    ppl_seqlen: int = 512
    max_windows: int | None = 32
    zero_shot_tasks: list[str] = field(default_factory=list)  # lm-eval task names
    num_fewshot: int = 0
    zs_limit: int | None = None  # examples per task (None = all)
    batch_size: int = 4
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    save_dir: str | None = None
    sweep: int | None = None  # id of the sweep this run is a cell of
    kind: str = field(default="prune", init=False)

    # -- derived ----------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return self.method == DENSE

    def target(self) -> Target:
        return Target() if self.is_dense else Target.parse(self.sparsity)

    def sparsity_columns(self) -> tuple[float | None, str]:
        target = self.target()
        return target.fraction, target.pattern

    def baseline(self) -> PruneSpec | None:
        return None if self.is_dense else self.dense_baseline()

    def dense_baseline(self) -> PruneSpec:
        """The dense run whose perplexity this run is compared with (same model and evaluation)."""
        return PruneSpec(model=self.model, method=DENSE, sparsity="0", samples=0, seqlen=0,
                         seed=0, calibration="", ppl_datasets=list(self.ppl_datasets),
                         ppl_seqlen=self.ppl_seqlen, max_windows=self.max_windows,
                         zero_shot_tasks=list(self.zero_shot_tasks), num_fewshot=self.num_fewshot,
                         zs_limit=self.zs_limit, batch_size=self.batch_size, dtype=self.dtype,
                         device=self.device, trust_remote_code=self.trust_remote_code)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (not where it runs or is saved)."""
        values = self.to_dict()
        for key in ("device", "batch_size", "save_dir", "sweep"):
            values.pop(key)
        if self.is_dense:
            for key in ("sparsity", "method_params", "calibration", "samples", "seqlen", "seed",
                        "block_range", "owl"):
                values.pop(key)
        return values

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Every problem with the spec, each worded as what is wrong and what is allowed."""
        errors: list[str] = []
        if not self.model.strip():
            errors.append("Model: give 'smollm2-135m', a local folder or a hub id.")
        elif _looks_like_path(self.model) and not Path(self.model).expanduser().is_dir():
            errors.append(f"Model: the folder {self.model!r} does not exist; give an existing "
                          "model folder, 'smollm2-135m' or a hub id such as "
                          "meta-llama/Llama-2-7b-hf.")
        if self.method != DENSE and self.method not in REGISTRY:
            errors.append(f"Method: {self.method!r} is unknown; choose dense or one of "
                          f"{', '.join(sorted(REGISTRY))}.")
        if not self.is_dense:
            try:
                target = Target.parse(self.sparsity)
                if target.fraction == 0:
                    errors.append("Sparsity: 0 prunes nothing; pick the 'dense' method instead.")
            except ValueError as exc:
                errors.append(f"Sparsity: {exc}")
            if self.method in REGISTRY:
                try:
                    get_method(self.method, **self.method_params)
                except (ValueError, TypeError) as exc:
                    errors.append(f"Method parameters: {exc}")
            if self.method in REGISTRY and (REGISTRY[self.method].needs_calibration
                                            or self.owl is not None):
                errors += self._check_calibration()
        if self.owl is not None:
            errors += self._check_owl()
        if self.block_range is not None and (
                len(self.block_range) != 2 or not 0 <= self.block_range[0] < self.block_range[1]):
            errors.append("Block range: give [start, end) with 0 <= start < end.")
        if not self.ppl_datasets and not self.zero_shot_tasks:
            errors.append("Evaluation: choose at least one perplexity dataset or zero-shot task.")
        for name in self.ppl_datasets:
            errors += _check_source("Evaluation dataset", name)
        errors += _range("Perplexity seqlen", self.ppl_seqlen, *LIMITS["seqlen"])
        errors += _range("Batch size", self.batch_size, *LIMITS["batch_size"])
        if self.max_windows is not None:
            errors += _range("Max windows", self.max_windows, *LIMITS["max_windows"])
        if self.zero_shot_tasks:
            from core.engine.evaluate import zeroshot

            errors += zeroshot.validate_tasks(list(self.zero_shot_tasks))
            errors += _range("Few-shot examples", self.num_fewshot, 0, 64)
            if self.zs_limit is not None:
                errors += _range("Zero-shot limit", self.zs_limit, 1, 10**7)
        if self.dtype not in DTYPE_CHOICES:
            errors.append(f"Dtype: {self.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}.")
        errors += _check_device(self.device)
        return errors

    def _check_owl(self) -> list[str]:
        errors = []
        if self.method not in OWL_METHODS:
            errors.append(f"OWL: works with {', '.join(OWL_METHODS)}, not {self.method!r}.")
        try:
            if Target.parse(self.sparsity).is_nm:
                errors.append("OWL: layer-wise sparsity is for unstructured targets, not N:M.")
        except ValueError:
            pass  # reported by the sparsity check
        unknown = set(self.owl) - {"M", "lambda"}
        if unknown:
            errors.append(f"OWL: unknown setting(s) {sorted(unknown)}; allowed: M, lambda.")
        m, lam = self.owl.get("M", 5), self.owl.get("lambda", 0.08)
        if not isinstance(m, (int, float)) or m <= 0:
            errors.append(f"OWL: M must be a positive number, not {m!r}.")
        if not isinstance(lam, (int, float)) or not 0 <= lam < 0.5:
            errors.append(f"OWL: lambda must be in [0, 0.5), not {lam!r}.")
        return errors

    def _check_calibration(self) -> list[str]:
        errors = _range("Calibration samples", self.samples, *LIMITS["samples"])
        errors += _range("Calibration seqlen", self.seqlen, *LIMITS["seqlen"])
        errors += _check_source("Calibration source", self.calibration)
        return errors


def _check_source(label: str, name: str) -> list[str]:
    if name in data.known_sources() or Path(name).expanduser().is_file():
        return []
    if _looks_like_path(name) or name.endswith(".txt"):
        return [f"{label}: the file {name!r} does not exist."]
    return [f"{label} {name!r} is unknown: use one of {', '.join(data.known_sources())} "
            "or the path of a .txt file."]


def _check_device(device: str) -> list[str]:
    import torch

    if device == "cpu":
        return []
    if device == "mps":
        ok = torch.backends.mps.is_available()
    elif re.fullmatch(r"cuda(:\d+)?", device):
        index = int(device.partition(":")[2] or 0)
        ok = torch.cuda.is_available() and index < torch.cuda.device_count()
    else:
        return [f"Device: {device!r} is not one of cpu, cuda, cuda:N, mps."]
    return [] if ok else [f"Device: {device!r} is not available on this machine; use cpu."]


def _looks_like_path(name: str) -> bool:
    """A local path, as opposed to a hub id such as 'meta-llama/Llama-2-7b-hf'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _range(label: str, value: Any, low: int, high: int) -> list[str]:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return [f"{label}: {value!r} is not a whole number between {low} and {high}."]
    return []


# -- activation sparsity (CoreInfer, sparsity levels) and its parameter search ------------------
ACTIVATION_METHODS = ("coreinfer", "sparsity-levels")
#: The final configurations a search runs on the full set (stored as activation runs).
SEARCH_CONFIGS = ("CoreInfer", "best", "AVG")


def _model_problems(model: str) -> list[str]:
    if not model.strip():
        return ["Model: give 'smollm2-135m', a local folder or a hub id."]
    if _looks_like_path(model) and not Path(model).expanduser().is_dir():
        return [f"Model: the folder {model!r} does not exist; give an existing model folder, "
                "'smollm2-135m' or a hub id such as meta-llama/Llama-2-7b-hf."]
    return []


def _fraction(label: str, value: Any, zero_ok: bool = False) -> list[str]:
    """A kept fraction in (0, 1] (or [0, 1] with ``zero_ok``)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (0 <= value <= 1 if zero_ok else 0 < value <= 1)):
        allowed = "between 0 and 1" if zero_ok else "above 0 and at most 1"
        return [f"{label}: {value!r} is not a number {allowed}."]
    return []


def _block_range_problems(block_range: Any) -> list[str]:
    if block_range is not None and (
            not isinstance(block_range, (list, tuple)) or len(block_range) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_range)
            or not 0 <= block_range[0] < block_range[1]):
        return ["Block range: give [start, end) with 0 <= start < end."]
    return []


def _common_problems(spec: Any) -> list[str]:
    errors = _range("Batch size", spec.batch_size, *LIMITS["batch_size"])
    if spec.dtype not in DTYPE_CHOICES:
        errors.append(f"Dtype: {spec.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}.")
    return errors + _check_device(spec.device)


@dataclass
class ActivationSpec(_SpecBase):
    """CoreInfer (one kept fraction) or sparsity levels (one kept fraction per block), evaluated
    on lm-eval tasks and/or perplexity.  No weights change; the actual (measured) kept fraction
    is stored, never the parameter.  A parameter search stores its full-set runs as activation
    runs with ``config`` / ``goal`` / ``trial`` / ``search`` set."""

    model: str = config.DEFAULT_MODEL
    method: str = "coreinfer"  # or "sparsity-levels"
    sparsity: float = 0.4  # CoreInfer: fraction of FFN neurons KEPT in every converted block
    token_sparsity: float = 0.2
    levels: list[float] | None = None  # sparsity-levels: kept fraction per converted block
    block_range: list[int] | None = None  # [start, end): blocks converted (default all)
    tasks: list[str] = field(default_factory=list)  # lm-eval task names
    num_fewshot: int = 0
    limit: int | None = None  # examples per task (None = all)
    metric: str = ""  # headline metric of the tasks ('' = acc_norm, acc, exact_match, ...)
    ppl_datasets: list[str] = field(default_factory=list)
    ppl_seqlen: int = 256
    max_windows: int | None = 16
    batch_size: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    config: str = ""  # set by a search: CoreInfer / best / AVG ('' = not part of a search)
    goal: float | None = None  # set by a search: its goal mean kept fraction
    trial: int | None = None  # set by a search: the trial the best config came from
    search: int | None = None  # set by a search: the search run's id
    kind: str = field(default="activation", init=False)

    def identity(self) -> dict[str, Any]:
        values = self.to_dict()
        for key in ("device", "batch_size", "search"):
            values.pop(key)
        if self.method == "coreinfer":
            values.pop("levels")
        else:
            values.pop("sparsity")
        return values

    def validate(self) -> list[str]:
        errors = _model_problems(self.model)
        if self.method not in ACTIVATION_METHODS:
            errors.append(f"Method: {self.method!r} is unknown; choose one of "
                          f"{', '.join(ACTIVATION_METHODS)}.")
        elif self.method == "coreinfer":
            errors += _fraction("Kept fraction (CoreInfer sparsity)", self.sparsity)
        elif not self.levels:
            errors.append("Levels: give one kept fraction per converted block, e.g. "
                          "0.35, 0.4, 0.45 (each between 0 and 1).")
        else:
            bad = [v for v in self.levels if _fraction("", v, zero_ok=True)]
            if bad:
                errors.append(f"Levels: {bad} are not kept fractions; each level must be a "
                              "number between 0 and 1.")
        errors += _fraction("Token sparsity", self.token_sparsity)
        errors += _block_range_problems(self.block_range)
        if (self.method == "sparsity-levels" and self.levels and self.block_range
                and not _block_range_problems(self.block_range)
                and len(self.levels) != self.block_range[1] - self.block_range[0]):
            errors.append(f"Levels: {len(self.levels)} values for the block range "
                          f"{self.block_range}; give one per converted block "
                          f"({self.block_range[1] - self.block_range[0]}).")
        if not self.tasks and not self.ppl_datasets:
            errors.append("Evaluation: choose at least one lm-eval task or perplexity dataset.")
        if self.tasks:
            from core.engine.evaluate import zeroshot

            errors += zeroshot.validate_tasks(list(self.tasks))
            errors += _range("Few-shot examples", self.num_fewshot, 0, 64)
            if self.limit is not None:
                errors += _range("Examples per task", self.limit, 1, 10**7)
        for name in self.ppl_datasets:
            errors += _check_source("Evaluation dataset", name)
        if self.ppl_datasets:
            errors += _range("Perplexity seqlen", self.ppl_seqlen, *LIMITS["seqlen"])
            if self.max_windows is not None:
                errors += _range("Max windows", self.max_windows, *LIMITS["max_windows"])
        return errors + _common_problems(self)


@dataclass
class SearchSpec(_SpecBase):
    """Seed 003's parameter search for the sparsity-levels method on one lm-eval task.

    Neuron scores come from ``n_calibration`` prompts of the task; for each ``sum_weight``
    (``count_weight = 1 - sum_weight``) the threshold whose mean level over the converted blocks
    is within 0.005 of the goal is found by bisection; each configuration is scored on the first
    ``n_search`` examples; the best one, AVG (element-wise mean of all level vectors) and CoreInfer
    then run on the full set (``full_limit`` examples, None = all).  The goal is either ``goal``
    (a mean kept fraction) or ``goal_factor`` x CoreInfer's measured kept fraction (1.0 = the
    same actual sparsity, 0.9 = "10% less"); with ``goal_factor`` the run fills in ``goal``.
    """

    model: str = config.DEFAULT_MODEL
    task: str = "sb_everyday"
    goal: float | None = 0.4
    goal_factor: float | None = None
    coreinfer_sparsity: float = 0.4  # CoreInfer's kept-fraction parameter for the comparison
    token_sparsity: float = 0.2
    sum_weights: list[float] = field(
        default_factory=lambda: [0.15, 0.2, 0.25, 0.3, 0.4, 0.45, 0.55, 0.6])
    top_k: int = 100
    n_calibration: int = 16
    n_search: int = 100
    full_limit: int | None = None
    block_range: list[int] | None = None
    num_fewshot: int = 0
    metric: str = ""  # '' = the task's headline metric (acc_norm, acc, exact_match, ...)
    tolerance: float = 0.005
    batch_size: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    kind: str = field(default="search", init=False)

    @property
    def method(self) -> str:
        return "sparsity-levels"

    def identity(self) -> dict[str, Any]:
        values = self.to_dict()
        for key in ("device", "batch_size"):
            values.pop(key)
        if self.goal_factor is not None:
            values.pop("goal")  # resolved from CoreInfer's measured kept fraction at run time
        return values

    def validate(self) -> list[str]:
        errors = _model_problems(self.model)
        if not isinstance(self.task, str) or not self.task.strip():
            errors.append("Task: give one lm-eval task name, e.g. sb_everyday or "
                          "truthfulqa_gen.")
        else:
            from core.engine.evaluate import zeroshot

            errors += [p.replace("Zero-shot task", "Task") for p in
                       zeroshot.validate_tasks([self.task])]
        if self.goal_factor is None:
            errors += (["Goal: give a goal mean kept fraction, or a factor of CoreInfer's "
                        "measured kept fraction."] if self.goal is None
                       else _fraction("Goal", self.goal))
        else:
            errors += _fraction("Goal factor", self.goal_factor)
        errors += _fraction("CoreInfer kept fraction", self.coreinfer_sparsity)
        errors += _fraction("Token sparsity", self.token_sparsity)
        weights = self.sum_weights if isinstance(self.sum_weights, list) else []
        if not weights:
            errors.append("Sum weights: give at least one value between 0 and 1, e.g. "
                          "0.15, 0.3, 0.45.")
        else:
            bad = [w for w in weights if _fraction("", w, zero_ok=True)]
            if bad:
                errors.append(f"Sum weights: {bad} are outside [0, 1]; each sum weight is a "
                              "number between 0 and 1 (count weight = 1 - sum weight).")
            if len(set(weights)) != len(weights):
                errors.append("Sum weights: a value is repeated; give each value once.")
            if len(weights) > 50:
                errors.append(f"Sum weights: {len(weights)} values; at most 50.")
        errors += _range("Top-k", self.top_k, 1, 10**6)
        errors += _range("Calibration prompts", self.n_calibration, *LIMITS["samples"])
        errors += _range("Search samples", self.n_search, 1, 10**7)
        if self.full_limit is not None:
            errors += _range("Full-set limit", self.full_limit, 1, 10**7)
        errors += _block_range_problems(self.block_range)
        errors += _range("Few-shot examples", self.num_fewshot, 0, 64)
        if (isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float))
                or not 0 < self.tolerance <= 0.1):
            errors.append(f"Tolerance: {self.tolerance!r} is not a number in (0, 0.1].")
        return errors + _common_problems(self)
