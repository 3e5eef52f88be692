"""Run kind ``prune``: load a model, prune it (or keep it dense), evaluate perplexity and
zero-shot accuracy; returns a :class:`~core.runs.results.RunResult` (nothing is stored here)."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator

from core import config
from core.engine import data, devices, environment, models, plan
from core.engine.checkpoint import CheckpointWriter, LazyModel
from core.engine.evaluate import zeroshot
from core.engine.evaluate.perplexity import blockwise_perplexity, is_collapsed, vocab_size
from core.engine.masks import Selection
from core.engine.plan import Work
from core.engine.prune import owl
from core.engine.prune.methods import REGISTRY, Target, get_method
from core.engine.prune.runner import PruneReport, Resident, as_source, prune_model
from core.runs import costs, placement, preflight
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
    device_field,
    device_problems,
    field_label,
    labelled,
    model_problems,
    short_value,
    source_problems,
    spec_hash,
    task_problems,
    whole,
)

DENSE = "dense"
OWL_METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATION_FIELDS = ("calibration", "samples", "seqlen")


class PruneSpec(SpecModel):
    """Prune a model (or leave it dense) and evaluate its perplexity and zero-shot accuracy."""

    kind: Literal["prune"] = "prune"
    model: str = labelled(
        config.DEFAULT_MODEL, "Model", form_label="Model name or folder",
        help=f"'{config.DEFAULT_MODEL}' is the offline default (installed with the app): "
             "SmolLM2-135M-Instruct, Llama architecture, de-quantised from a 4-bit GGUF. Or a "
             "local folder with a transformers model, or a hub id such as "
             "meta-llama/Llama-2-7b-hf (needs network access).")
    method: str = labelled("wanda", "Method", help=f"{DENSE} or a pruning method: "
                                                  f"{', '.join(sorted(REGISTRY))}")
    sparsity: str = labelled(
        "0.5", "Sparsity", help="Fraction of weights pruned: 0.5 or 50%; or N:M such as 2:4 "
                                "(N pruned in every M consecutive inputs).")
    method_params: dict[str, Any] = labelled(dict, "Method parameters")
    calibration: str = labelled(config.DEFAULT_TEXT, "Calibration source",
                                help="wiki-offline, wikitext2, ptb, c4 or a .txt path",
                                short="calibration {value}")
    samples: int = whole(32, *LIMITS["samples"], "Calibration samples", form_label="Samples",
                         help="Calibration sequences (the papers use 128).",
                         short="{value} samples")
    seqlen: int = whole(512, *LIMITS["seqlen"], "Calibration seqlen",
                        form_label="Tokens per sample", help="Tokens in each calibration sequence.",
                        short="{value}-token samples")
    seed: int = whole(0, 0, 2**31 - 1, "Seed", help="Seed of the calibration windows.",
                      short="seed {value}")
    selection: Selection = labelled(
        "reference", "Selection rule",
        help="reference: the rule of the method's own code (one threshold that also prunes "
             "tied scores; N:M groups by torch.topk), so masks equal the published code's. "
             "exact: exactly the target count per matrix (ties by index), for equal sparsity "
             "across methods.", short="{value} selection")
    block_range: list[int] | None = labelled(
        None, "Block range", help="[start, end): blocks outside stay dense.", cli="--blocks",
        cli_nargs=2, cli_metavar=["START", "END"], short="blocks {value[0]}–{value[1]}")
    owl: dict[str, float] | None = labelled(  # {"M": 5, "lambda": 0.08}
        None, "OWL", help="OWL layer-wise sparsity (magnitude, wanda, sparsegpt), e.g. --owl 5 "
                          "0.08", cli="--owl", cli_nargs=2, cli_metavar=["M", "lambda"])
    ppl_datasets: list[str] = labelled(
        lambda: [config.DEFAULT_TEXT], "Evaluation datasets", cli="--eval",
        help="wiki-offline, wikitext2, ptb, c4 or .txt paths")
    ppl_seqlen: int = whole(512, *LIMITS["seqlen"], "Perplexity seqlen",
                            form_label="Window length (tokens)",
                            help="Perplexity windows: non-overlapping, of this many tokens.")
    max_windows: int | None = whole(32, *LIMITS["max_windows"], "Max windows",
                                    form_label="Max windows (0 = all)",
                                    help="Cap on evaluation windows per dataset (0 = all).",
                                    cli_zero_is_none=True)
    zero_shot_tasks: list[str] = labelled(
        list, "Zero-shot tasks", cli="--zero-shot",
        help="lm-eval tasks, e.g. piqa hellaswag arc_easy boolq rte, or the offline "
             "sb_everyday sb_wiki_next")
    num_fewshot: int = whole(0, 0, 64, "Few-shot examples")
    zs_limit: int | None = whole(None, 1, 10**7, "Zero-shot limit",
                                 form_label="Examples per task (0 = all)")
    batch_size: int = whole(4, *LIMITS["batch_size"], "Batch size",
                            help="Windows / examples per forward pass.")
    dtype: Dtype = labelled("auto", "Dtype", form_label="Weights dtype", short="{value}",
                            help=DTYPE_HELP)
    device: Device = device_field()
    trust_remote_code: bool = labelled(
        False, "Trust remote code", help="Runs Python code shipped with the model. Off unless "
                                         "you trust the model's authors.")
    save_dir: str | None = labelled(None, "Save to", cli="--save",
                                    help="save the pruned model (safetensors) in this folder")
    sweep: int | None = None  # id of the sweep this run is a cell of (set by a sweep)
    #: The data protocol the run's windows were made with (``core.engine.data.PROTOCOL``).
    data_protocol: int = data.PROTOCOL

    SYSTEM_FIELDS = ("kind", "sweep", "data_protocol")
    LABEL_FIELDS = ("block_range", "selection")

    # -- field checks ------------------------------------------------------------------------
    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value != DENSE and value not in REGISTRY:
            raise ValueError(f"Method: {value!r} is unknown; choose dense or one of "
                             f"{', '.join(sorted(REGISTRY))}.")
        return value

    @field_validator("sparsity")
    @classmethod
    def _readable_sparsity(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("method", DENSE) == DENSE:
            return value
        try:
            target = Target.parse(value)
        except ValueError as exc:
            raise ValueError(f"Sparsity: {exc}") from exc
        if target.fraction == 0:
            raise ValueError("Sparsity: 0 prunes nothing; pick the 'dense' method instead.")
        return value

    @field_validator("method_params")
    @classmethod
    def _method_accepts(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method", DENSE)
        if method in REGISTRY:
            try:
                get_method(method, **value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"Method parameters: {exc}") from exc
        return value

    @field_validator(*CALIBRATION_FIELDS, mode="wrap")
    @classmethod
    def _blank_when_dense(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        """A dense run keeps no calibration settings (stored as 0 / '')."""
        if info.data.get("method") == DENSE and value in (0, ""):
            return value
        return handler(value)

    _block_range = field_validator("block_range")(check_block_range)

    # -- checks between fields and of the machine ----------------------------------------------
    def cross_problems(self) -> list[str]:
        errors = self._owl_problems() if self.owl is not None else []
        if not self.ppl_datasets and not self.zero_shot_tasks:
            errors.append("Evaluation: choose at least one perplexity dataset or zero-shot task.")
        return errors

    def _owl_problems(self) -> list[str]:
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
        m, lam = self.owl.get("M", owl.DEFAULT_M), self.owl.get("lambda", owl.DEFAULT_LAMBDA)
        if not isinstance(m, (int, float)) or m <= 0:
            errors.append(f"OWL: M must be a positive number, not {m!r}.")
        if not isinstance(lam, (int, float)) or not 0 <= lam < 0.5:
            errors.append(f"OWL: lambda must be in [0, 0.5), not {lam!r}.")
        return errors

    def needs_calibration(self) -> bool:
        return self.method in REGISTRY and (REGISTRY[self.method].needs_calibration
                                            or self.owl is not None)

    def machine_problems(self) -> list[str]:
        errors = model_problems(self.model)
        if self.needs_calibration():
            errors += source_problems("Calibration source", self.calibration)
            errors += preflight.calibration_text_problems("Calibration source",
                                                          self.calibration, self.seqlen)
        for name in self.ppl_datasets:
            errors += source_problems("Evaluation dataset", name)
            errors += preflight.evaluation_text_problems("Evaluation dataset", name,
                                                         self.ppl_seqlen)
        if self.zero_shot_tasks:
            errors += task_problems(self.zero_shot_tasks)
        if self.save_dir:
            errors += preflight.save_problems(field_label(type(self).model_fields["save_dir"]),
                                              self.save_dir, self.model, self.identity_hash())
        device = device_problems(self.device)
        return errors + device + self._preflight(device_ok=not device)

    def _preflight(self, device_ok: bool) -> list[str]:
        """The model resolves, has an adapter (a pruned run), its windows fit, and its memory
        plan fits the device and the host (``core.runs.preflight``)."""
        fields = type(self).model_fields
        windows = {}
        if self.needs_calibration():
            windows[field_label(fields["seqlen"])] = self.seqlen
        if self.ppl_datasets:
            windows[field_label(fields["ppl_seqlen"])] = self.ppl_seqlen
        return preflight.model_fit_problems(
            self.model, need="causal" if self.is_dense else "adapter", windows=windows,
            work=self.work() if device_ok else None, trust_remote_code=self.trust_remote_code)

    def work(self) -> Work:
        """What this run does, in the memory plan's terms (``core.engine.plan``)."""
        text = max([plan.calibration_tokens(self.calibration) if self.needs_calibration()
                    else 0] + [plan.eval_tokens(name) for name in self.ppl_datasets])
        windows = max([plan.eval_windows(name, self.ppl_seqlen, self.max_windows)
                       for name in self.ppl_datasets], default=0)
        return Work(dtype=self.dtype, device=devices.planning_device(self.device),
                    method=None if self.is_dense else self.method,
                    samples=self.samples if self.needs_calibration() else 0,
                    seqlen=self.seqlen if self.needs_calibration() else 0,
                    owl=self.owl is not None, ppl_windows=windows, ppl_seqlen=self.ppl_seqlen,
                    batch_size=self.batch_size, zero_shot=bool(self.zero_shot_tasks),
                    save=bool(self.save_dir), text_tokens=text,
                    converts=models.converts_first(self.model))

    def identity_hash(self) -> str:
        """The hash of ``identity()`` (what the store finds identical runs by)."""
        return spec_hash(self.identity())

    def save_marker(self) -> dict[str, Any]:
        """What a save folder records of the run that wrote it (an earlier save of the same
        run may be written over)."""
        return {"identity": self.identity_hash(), "model": self.model, "method": self.method,
                "sparsity": self.sparsity}

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

    def label_words(self) -> list[str]:
        """Non-default method parameters, OWL, block range, selection rule, calibration (when
        the method uses it) and dtype: 'variant · OWL · blocks 0–12 · 128 samples'."""
        if self.is_dense:
            return [word for word in [self.field_word("dtype")] if word]
        words = self._param_words() + self._owl_words() + super().label_words()
        if self.needs_calibration() and any(self.field_word(name) for name in
                                            (*CALIBRATION_FIELDS, "seed")):
            words.append(self._calibration_words())
        return words + [word for word in [self.field_word("dtype")] if word]

    def _calibration_words(self) -> str:
        """'calibration sample.txt 128×512, seed 3' (a text file by its name)."""
        source = Path(self.calibration).name if self.calibration.endswith(".txt") \
            else self.calibration
        return f"calibration {source} {self.samples}×{self.seqlen}, seed {self.seed}"

    def setting_words(self) -> list[str]:
        """Calibration (for a method that uses it), selection and dtype, defaults included."""
        if self.is_dense:
            return [self.dtype_word()]
        words = []
        if self.needs_calibration():
            words.append(self._calibration_words())
        return words + [f"{self.selection} selection", self.dtype_word()]

    def dtype_word(self) -> str:
        """'float16', or 'auto dtype' for the checkpoint's own (the run's log names it)."""
        return "auto dtype" if self.dtype == "auto" else self.dtype

    def _param_words(self) -> list[str]:
        """The method's parameters that differ from its defaults ('variant', 'alpha 0.1')."""
        defaults = REGISTRY[self.method].defaults if self.method in REGISTRY else {}
        words = []
        for name, value in sorted(self.method_params.items()):
            if name in defaults and value == defaults[name]:
                continue
            if isinstance(value, bool):
                words.append(name if value else f"no {name}")
            else:
                words.append(f"{name} {short_value(value)}")
        return words

    def _owl_words(self) -> list[str]:
        """'OWL' with its M and λ where they are not OWL's defaults."""
        if self.owl is None:
            return []
        m, lam = self.owl.get("M", owl.DEFAULT_M), self.owl.get("lambda", owl.DEFAULT_LAMBDA)
        if (m, lam) == (owl.DEFAULT_M, owl.DEFAULT_LAMBDA):
            return ["OWL"]
        return [f"OWL M {short_value(float(m))} λ {short_value(float(lam))}"]

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (not where it runs or is saved)."""
        values = self.to_dict()
        for key in ("device", "batch_size", "save_dir", "sweep"):
            values.pop(key)
        if self.is_dense:
            for key in ("sparsity", "method_params", "calibration", "samples", "seqlen", "seed",
                        "selection", "block_range", "owl"):
                values.pop(key)
        return values


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
    """Place the model by its memory plan, prune it one block at a time (unless dense) into
    the save folder or a working folder, then evaluate what was written."""
    result = RunResult()
    progress("loading model", 0, 1)
    say(f"loading {spec.model} ({spec.dtype}) on {spec.device}")
    placed = placement.place(spec.model, spec.dtype, spec.device, spec.work(), say,
                             spec.trust_remote_code)
    tokenizer = models.load_tokenizer(str(placed.folder), spec.trust_remote_code)
    source = placement.open_source(placed, say=say)
    size = placement.checkpoint_bytes(source, placed.dtype)
    writes = not spec.is_dense or bool(spec.save_dir)
    with placement.working_folder(spec.save_dir, size if writes else 0) as folder:
        if writes:
            source = prune(source, tokenizer, spec, result, progress, say, placed, folder)
        started = time.perf_counter()
        evaluate_perplexity(source, tokenizer, spec, result, progress, say, placed.store)
        evaluate_zero_shot(source, tokenizer, spec, result, progress, say, placed)
    result.metrics += [
        {"kind": "timing", "dataset": "-", "metric": "eval_seconds",
         "value": time.perf_counter() - started},
        {"kind": "memory", "dataset": "-", "metric": "peak_mb",
         "value": environment.peak_memory_mb(spec.device)},
    ]
    return result


def prune(source: LazyModel | Resident, tokenizer: Any, spec: PruneSpec, result: RunResult,
          progress: ProgressFn, say: Say, placed: placement.Placement, folder: Path
          ) -> LazyModel | Resident:
    """Calibrate (when the method or OWL needs it), prune (a dense run with a save folder: copy)
    and record sparsity and time; the pruned model is written to ``folder`` block by block
    and returned as the source to evaluate."""
    if isinstance(source, LazyModel):
        source.writer = CheckpointWriter(source, folder)
    try:
        if not spec.is_dense:
            prune_blocks(source, tokenizer, spec, result, progress, say, placed)
        return finish(source, tokenizer, spec, progress, say, placed, folder)
    except BaseException:
        if isinstance(source, LazyModel) and source.writer is not None:
            source.writer.abandon()
        raise


def prune_blocks(source: LazyModel | Resident, tokenizer: Any, spec: PruneSpec,
                 result: RunResult, progress: ProgressFn, say: Say,
                 placed: placement.Placement) -> None:
    """The pruning itself, with its metrics and layer statistics."""
    method = get_method(spec.method, selection=spec.selection, owl=owl_setting(spec),
                        **spec.method_params)
    method.token_store = placed.token_store
    target = spec.target()
    calibration = None
    if method.needs_data:
        progress("calibration data", 0, 1)
        say(f"calibration: {spec.samples} x {spec.seqlen} tokens of {spec.calibration}, "
            f"seed {spec.seed}")
        calibration = data.calibration_ids(tokenizer, spec.calibration, spec.samples,
                                           spec.seqlen, spec.seed)
    say(f"pruning with {spec.method}{' + OWL' if method.owl else ''} to {target.label} "
        f"({spec.selection} selection)")
    started = time.perf_counter()
    report = prune_model(source, method, target, calibration, device=spec.device,
                         block_range=tuple(spec.block_range) if spec.block_range else None,
                         progress=progress, store=placed.store)
    record_pruning(report, method, time.perf_counter() - started, result, say)


def finish(source: LazyModel | Resident, tokenizer: Any, spec: PruneSpec, progress: ProgressFn,
           say: Say, placed: placement.Placement, folder: Path) -> LazyModel | Resident:
    """Complete the written checkpoint (or save a model held whole) and return what to
    evaluate."""
    if spec.save_dir:
        progress("saving model", 0, 1)
    if isinstance(source, Resident):
        if spec.save_dir:
            models.save_model(source.model, tokenizer, folder)
            say(f"saved to {spec.save_dir}")
        return source
    written = source.writer.finish(tokenizer, marker=spec.save_marker())
    if spec.save_dir:
        say(f"saved to {spec.save_dir} ({placed.dtype}, {len(source.writer.groups)} shards)")
    return placement.open_source(placed, written)


def record_pruning(report: PruneReport, method: Any, seconds: float, result: RunResult,
                   say: Say) -> None:
    """The run's pruning metrics, layer statistics and log lines."""
    if method.owl is not None:
        result.layer_stats += [{"block": b, "layer": "block", "stat": "owl_target",
                                "value": t} for b, t in enumerate(report.block_targets)]
        say("OWL targets per block: " + ", ".join(f"{t:.3f}" for t in report.block_targets))
    for warning in report.warnings:
        say(warning)
    say(f"pruned in {seconds:.1f} s; measured sparsity {report.overall:.4f}")
    result.layer_stats += layer_stat_rows(report)
    result.metrics += [
        {"kind": "timing", "dataset": "-", "metric": "prune_seconds", "value": seconds},
        {"kind": "sparsity", "dataset": "-", "metric": "measured", "value": report.overall},
    ]


def owl_setting(spec: PruneSpec) -> owl.OWL | None:
    """The spec's OWL settings ({"M": 5, "lambda": 0.08}), or None without OWL."""
    if spec.owl is None:
        return None
    return owl.OWL(M=float(spec.owl.get("M", owl.DEFAULT_M)),
                   lam=float(spec.owl.get("lambda", owl.DEFAULT_LAMBDA)))


def perplexity_status(value: float | None, vocab: int | None) -> tuple[str, str | None]:
    """The metric status and note of a perplexity: 'diverged' (no finite value), 'collapsed'
    (finite but at or above the vocabulary size ``vocab``: worse than uniform guessing; the
    value is kept) or 'ok'."""
    if value is None or not math.isfinite(value):
        return "diverged", "non-finite loss: the model diverged"
    if is_collapsed(value, vocab):
        return "collapsed", (f"perplexity {value:,.0f} is at or above the vocabulary size "
                             f"({vocab:,}): worse than uniform guessing")
    return "ok", None


def perplexity_said(status: str, value: float | None, vocab: int | None) -> str:
    """A perplexity as the run's log states it: 'ppl 12.3456', 'diverged' or 'collapsed (ppl
    6,960,449.0 >= vocabulary size 49,152)'."""
    if status == "ok":
        return f"ppl {value:.4f}"
    if status == "collapsed":
        return f"collapsed (ppl {value:,.1f} >= vocabulary size {vocab:,})"
    return "diverged"


def evaluate_perplexity(source: Any, tokenizer: Any, spec: PruneSpec, result: RunResult,
                        progress: ProgressFn, say: Say, store: str | None = None) -> None:
    """The perplexity protocol on each of the spec's datasets, walking the blocks of
    ``source`` (a block source or a model in memory; hidden states kept on ``store``, default
    the device); diverged and collapsed models named so."""
    source = as_source(source)
    vocab = vocab_size(source.model)
    for name in spec.ppl_datasets:
        say(f"perplexity on {name} (seqlen {spec.ppl_seqlen}, "
            f"{spec.max_windows or 'all'} windows at most)")
        progress(f"perplexity {name}", 0, 1)  # the stage starts with reading the text
        ids = data.evaluation_ids(tokenizer, name, spec.ppl_seqlen, spec.max_windows)
        res = blockwise_perplexity(
            source, ids, spec.ppl_seqlen, spec.batch_size, spec.max_windows, spec.device,
            progress=lambda s, d, t, n=name: progress(f"perplexity {n}", d, t), store=store)
        status, note = perplexity_status(res.value, vocab)
        result.metrics.append({
            "kind": "perplexity", "dataset": name, "metric": "ppl", "value": res.value,
            "n_samples": res.tokens, "status": status, "note": note})
        if res.window_nlls:
            result.windows.append({"dataset": name, "nlls": list(res.window_nlls)})
        say(f"{name}: {perplexity_said(status, res.value, vocab)} over {res.windows} windows")


def evaluate_zero_shot(source: Any, tokenizer: Any, spec: PruneSpec, result: RunResult,
                       progress: ProgressFn, say: Say,
                       placed: placement.Placement | None = None) -> None:
    """lm-eval on the spec's zero-shot tasks, on the whole model (a model in memory, or one
    read from its files as ``placed``'s plan says); a failed task is logged, the others
    kept."""
    if not spec.zero_shot_tasks:
        return
    say(f"zero-shot through lm-eval {zeroshot.lm_eval_version()}: "
        f"{', '.join(spec.zero_shot_tasks)} ({spec.num_fewshot}-shot, limit {spec.zs_limit})")
    with placement.offload_folder() as offload:
        if not isinstance(source, LazyModel):
            model = as_source(source).model.to(spec.device)
        else:
            assert placed is not None
            model, _ = placement.whole_model(placed, source.folder, say, offload)
        zs = zeroshot.evaluate(model, tokenizer, list(spec.zero_shot_tasks), spec.num_fewshot,
                               spec.zs_limit, spec.batch_size, spec.device, progress)
    result.metrics += zs.rows
    for task, message in zs.failures.items():
        say(f"zero-shot task {task} failed (other tasks kept): {message}")


def stage_plan(spec: PruneSpec) -> list[Stage]:
    """The stages ``execute`` reports, in order, with their measured costs (``core.runs.costs``)."""
    stages = [Stage("loading model", costs.LOAD_S)]
    if not spec.is_dense:
        ktokens = spec.samples * spec.seqlen / 1000
        if spec.needs_calibration():
            stages += [Stage("calibration data", costs.CALIBRATION_S),
                       Stage("capturing block inputs", costs.CAPTURE_S_PER_KTOKEN * ktokens)]
        pruning = costs.prune_s(spec.method, ktokens)
        if spec.owl is not None:
            stages.append(Stage("OWL outlier ratios", costs.OWL_S_PER_KTOKEN * ktokens, "block"))
            pruning += costs.OWL_S_PER_KTOKEN * ktokens * (spec.method == "magnitude")
        stages.append(Stage("pruning", pruning, "block"))
    if spec.save_dir:
        stages.append(Stage("saving model", costs.SAVE_S))
    window_k = costs.windows(spec.max_windows) * spec.ppl_seqlen / 1000
    stages += [Stage(f"perplexity {name}", costs.PPL_FIXED_S + costs.PPL_S_PER_KTOKEN * window_k,
                     "block") for name in spec.ppl_datasets]
    stages += [Stage(f"zero-shot {task}", costs.task_s(task, spec.zs_limit), "request")
               for task in spec.zero_shot_tasks]
    return stages


register_kind("prune", PruneSpec, execute, title="Prune + evaluate", stages=stage_plan)
