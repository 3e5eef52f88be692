"""Preflight: what a spec must pass before it is queued that depends on the machine, checked
without loading any weights, so the Launch form, the command line and ``jobs.submit`` all refuse
a run that cannot work before anything is stored.

* the model resolves: a local folder holds a ``config.json``; a hub id is in the local Hugging
  Face cache when the hub is offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), else exists
  on the hub (asked with a short timeout; a network error means "cannot check", no problem);
* its architecture has an adapter (``core.engine.adapters``); CoreInfer runs need its families;
* the requested windows fit the model's positions (``max_position_embeddings``, GPT-2's
  ``n_positions``);
* a text file given as a source is UTF-8 text (NUL bytes or invalid UTF-8 in the first 64 KiB
  refuse it), not empty, and long enough for the windows;
* the run's memory plan (``core.engine.plan``) fits the device and the host: their total
  memory at submit, what is free when the run starts (``plan_problems(at_start=True)``).

Each check reads at most a ``config.json`` and the first 64 KiB of a text file.  The offline
default model is known good: its configuration is written down here, nothing is loaded.

Decisions
---------
Tokens of a text file are bounded, not counted: with every tokenizer of the supported families
(byte-level BPE, SentencePiece with byte fallback) a token stands for at least one byte of UTF-8,
so a file of N bytes gives at most about N tokens.  A file refused by this bound is certainly too
short; one that passes may still be short (English runs about 4 bytes a token), which the run
reports when it tokenizes.  No tokenizer is loaded and nothing valid is refused.

Memory is checked against totals at submit, not against what is free: a run queued while
another one uses the GPU waits its turn instead of being refused.  The worker checks the same
plan against the free memory when the run starts, and the run fails there with the numbers.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core import config
from core.engine import data
from core.engine.activation.coreinfer import SUPPORTED_FAMILIES
from core.engine.adapters import ADAPTERS
from core.engine.checkpoint import weight_files
from core.engine.plan import (
    DTYPE_BYTES,
    GIB,
    MemoryPlan,
    Work,
    gib,
    plan_run,
    positions_of,
    settings,
    shape_of,
    with_dtype,
)
from core.runs.specs import looks_like_path

HEAD_BYTES = 64 * 1024
HUB_TIMEOUT_S = 3.0
#: The offline default's configuration (SmolLM2-135M-Instruct, read from its GGUF header).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    config.DEFAULT_MODEL: {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "dtype": "float32",  # its safetensors conversion is written in fp32
    },
}
ENCODER_ONLY = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                "deberta-v2", "mpnet", "camembert", "modernbert")
MAGIC = {b"\x89PNG": "a PNG image", b"GGUF": "a GGUF model file", b"\xff\xd8\xff": "a JPEG image",
         b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document"}
ALLOWED_MODELS = (f"give '{config.DEFAULT_MODEL}', a folder saved by transformers "
                  "(save_pretrained) or a hub id that is in the local cache")


# -- the model resolves ---------------------------------------------------------------------------
def hub_offline() -> bool:
    """True when the environment turns the Hugging Face hub off (read at call time)."""
    from huggingface_hub import constants

    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f.strip().upper() in {"1", "ON", "YES", "TRUE"}
                                           for f in flags)


def cached_config_file(repo_id: str) -> str | None:
    """The cached ``config.json`` of a hub model, or None (no network call)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def online_problems(repo_id: str) -> list[str]:
    """Ask the hub whether ``repo_id`` exists (short timeout).  When the hub cannot be reached,
    a run on this machine could not fetch the model either: refused, naming the error and the
    cache looked in; with the Ray executor the cluster's machines may reach it, so it passes
    (the run's own check happens where it executes)."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return []  # it exists; access is the token's business
    except RepositoryNotFoundError:
        return [f"Model: {repo_id!r} is not on the Hugging Face hub (or is private and this "
                f"machine is not logged in); check the spelling or {ALLOWED_MODELS}."]
    except Exception as exc:  # no network, timeout, hub error
        if config.executor_name() != "local":
            return []
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) \
            else type(exc).__name__
        return [f"Model: {repo_id!r} is not in the local Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) and the hub cannot be reached to fetch it "
                f"({reason}); connect this machine, download the model while online, or "
                f"{ALLOWED_MODELS}."]
    return []


def hub_config(repo_id: str, trust_remote_code: bool = False) -> tuple[Any | None, list[str]]:
    """(config, []) for a cached hub id; (None, problems) when it cannot resolve."""
    from huggingface_hub.errors import HFValidationError

    try:
        cached = cached_config_file(repo_id)
    except HFValidationError:
        return None, [f"Model: {repo_id!r} is neither an existing folder nor a valid hub id "
                      f"(owner/name); {ALLOWED_MODELS}."]
    if cached is not None:
        return folder_config(Path(cached).parent, trust_remote_code, repo_id)
    if hub_offline():
        return None, [f"Model: {repo_id!r} is not in the local Hugging Face cache and the hub "
                      f"is offline here; check the spelling, download it while online, or "
                      f"{ALLOWED_MODELS}."]
    return None, online_problems(repo_id)


def folder_config(folder: Path, trust_remote_code: bool, shown: str) -> tuple[Any | None,
                                                                             list[str]]:
    """The config of a local model folder (read offline); its raw JSON when transformers does
    not know the model type, so the architecture check can still name it."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        return None, [f"Model: the folder {shown!r} has no config.json; give a folder saved by "
                      f"transformers (save_pretrained), '{config.DEFAULT_MODEL}' or a hub id."]
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True,
                                          trust_remote_code=trust_remote_code), []
    except Exception as exc:  # unknown model type, remote code refused, broken file
        try:
            raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None
        if isinstance(raw, dict) and raw.get("model_type"):
            return SimpleNamespace(**raw), []
        return None, [f"Model: transformers cannot read the config.json of {shown!r} ({exc}); "
                      f"give a folder saved by transformers (save_pretrained)."]


def load_config(model: str, trust_remote_code: bool = False) -> tuple[Any | None, list[str]]:
    """The model's config without its weights: (config, []), or (None, problems).

    (None, []) where there is nothing to check: no model given or a missing folder (both worded
    by ``specs.model_problems``), or a hub id that is neither cached nor checkable offline."""
    name = model.strip()
    if not name:
        return None, []
    if name in KNOWN_CONFIGS:
        return SimpleNamespace(**KNOWN_CONFIGS[name]), []
    path = Path(name).expanduser()
    if path.is_dir():
        return folder_config(path, trust_remote_code, name)
    if path.exists():
        return None, [f"Model: {name!r} is a file, not a folder; give a folder saved by "
                      f"transformers (save_pretrained), '{config.DEFAULT_MODEL}' or a hub id."]
    if looks_like_path(name):
        return None, []
    return hub_config(name, trust_remote_code)


def weight_problems(model: str) -> list[str]:
    """A local model folder must hold its weights (a hub model's are downloaded by the run)."""
    path = Path(model.strip()).expanduser()
    if model.strip() in KNOWN_CONFIGS or not path.is_dir() or weight_files(path):
        return []
    return [f"Model: the folder {model!r} has a config.json but no weight files (*.safetensors "
            "or *.bin); give a folder saved by transformers (save_pretrained) with its weights."]


# -- what the config says ----------------------------------------------------------------------
def architecture_problems(cfg: Any, need: str) -> list[str]:
    """Whether the model's type suits the run: ``need`` is 'causal' (a dense run: any decoder
    transformers loads as a causal LM), 'adapter' (pruning) or 'coreinfer'."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    values = settings(cfg)
    model_type = str(values.get("model_type") or getattr(cfg, "model_type", "") or "")
    kind = ("encoder-decoder" if values.get("is_encoder_decoder") or model_type in ("t5", "bart")
            else "encoder only" if model_type in ENCODER_ONLY else "")
    supported = ", ".join(ADAPTERS)
    causal = (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "auto_map" in values) and not kind
    if (need == "causal" and not causal) or (need != "causal" and model_type not in ADAPTERS):
        why = f" ({kind})" if kind else ""
        return [f"Model: model type {model_type!r} is not supported{why}; supported: "
                f"{supported}."]
    if need == "coreinfer" and ADAPTERS[model_type].family not in SUPPORTED_FAMILIES:
        types = ", ".join(t for t, a in ADAPTERS.items() if a.family in SUPPORTED_FAMILIES)
        return [f"Model: CoreInfer supports the Llama family and OPT, not {model_type!r}; use "
                f"a model of type {types}."]
    return []


def position_problems(cfg: Any, windows: dict[str, int]) -> list[str]:
    """Each window (label -> tokens) must fit the model's positions."""
    found = positions_of(cfg)
    if found is None:
        return []
    limit, key = found
    return [f"{label}: {tokens} tokens exceed the model's {limit} positions ({key}); use at "
            f"most {limit}." for label, tokens in windows.items() if tokens > limit]


# -- text files ------------------------------------------------------------------------------
def binary_reason(head: bytes, complete: bool) -> str | None:
    """Why the first bytes of a file are not UTF-8 text, or None when they are."""
    named = next((f"it looks like {what}" for magic, what in MAGIC.items()
                  if head.startswith(magic)), None)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        return named or f"invalid UTF-8 at byte {exc.start}"
    if b"\x00" in head:
        return named or f"a NUL byte at byte {head.index(0)}"
    return None


def text_file_problems(label: str, name: str, need: int, what: str) -> list[str]:
    """A text source given as a path: readable UTF-8 text, not empty, at least ``need`` tokens
    (bounded by its size: a token is at least one byte).  Known sources and missing files are
    left to ``specs.source_problems``; ``what`` says what the tokens are for."""
    path = Path(name).expanduser()
    if name in data.known_sources() or not path.is_file():
        return []
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        return [f"{label}: the file {name!r} cannot be read ({exc.strerror or exc}); give a "
                "readable UTF-8 .txt file."]
    reason = binary_reason(head, complete=size <= HEAD_BYTES)
    if reason:
        return [f"{label}: the file {name!r} is not UTF-8 text ({reason}); give a UTF-8 .txt "
                "file."]
    if size == 0 or (size <= HEAD_BYTES and not head.decode("utf-8").strip()):
        return [f"{label}: the file {name!r} is empty; give a UTF-8 .txt file with text in it."]
    if size < need:
        return [f"{label}: the file {name!r} holds {size} bytes, so at most about {size} tokens "
                f"(a token is at least one byte): {what}; give a longer text or fewer tokens."]
    return []


def calibration_text_problems(label: str, name: str, seqlen: int) -> list[str]:
    """A calibration file must hold more than one sample of ``seqlen`` tokens."""
    return text_file_problems(label, name, seqlen + 1,
                              f"one calibration sample of {seqlen} tokens needs {seqlen + 1}")


def evaluation_text_problems(label: str, name: str, seqlen: int) -> list[str]:
    """An evaluation file must hold at least one window of ``seqlen`` tokens."""
    return text_file_problems(label, name, seqlen, f"fewer than one window of {seqlen} tokens")


# -- the save folder ---------------------------------------------------------------------------
SAVE_MARKER = "sparsebench_run.json"


def source_folder(model: str) -> Path | None:
    """The folder the model's weights are read from, where it can be told without loading:
    the offline default's conversion, a local folder, a cached hub snapshot."""
    name = model.strip()
    if name in KNOWN_CONFIGS:
        return config.cache_dir() / "models" / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if looks_like_path(name):
        return None
    with contextlib.suppress(Exception):
        cached = cached_config_file(name)
        return Path(cached).parent.resolve() if cached else None
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _earlier_save(folder: Path, identity: str) -> bool:
    """Whether ``folder`` was written by an earlier run with this identity (its marker)."""
    try:
        marker = json.loads((folder / SAVE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("identity") == identity


def _probe(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (a probe file created and removed), or None."""
    probe = folder / f".sparsebench-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def save_problems(label: str, save_dir: str, model: str, identity: str) -> list[str]:
    """A save folder must not be (or hold, or lie inside) the model's own folder, must be new,
    empty or an earlier save of this same run, and its parent must take a file."""
    target = Path(save_dir).expanduser().resolve()
    source = source_folder(model)
    if source is not None and (_inside(target, source) or _inside(source, target)):
        return [f"{label}: {save_dir!r} is (or holds) the model's own folder {source}; saving "
                "there would overwrite the model. Choose another folder."]
    if target.exists() and not target.is_dir():
        return [f"{label}: {save_dir!r} is a file; give a folder."]
    if target.is_dir() and any(target.iterdir()) and not _earlier_save(target, identity):
        return [f"{label}: the folder {save_dir!r} already holds files and is not an earlier "
                "save of this run; give a new or empty folder."]
    parent = next(p for p in target.parents if p.exists())  # the root always exists
    reason = _probe(parent) if parent.is_dir() else f"{parent} is a file"
    if reason:
        return [f"{label}: nothing can be written in {save_dir!r} ({reason}); give a folder "
                "you can write to."]
    return []


# -- memory ----------------------------------------------------------------------------------
def config_dtype(cfg: Any) -> str:
    """The dtype a checkpoint's config names ('auto' resolves to it; float32 when none)."""
    values = settings(cfg)
    named = values.get("dtype") or values.get("torch_dtype") or "float32"
    named = str(named).removeprefix("torch.")
    return named if named in DTYPE_BYTES else "float32"


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory(at_start: bool) -> int | None:
    """The host's RAM: all of it (at submit), or what is available now (when a run starts)."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.available if at_start else memory.total)
    except ImportError:
        return _meminfo("MemAvailable" if at_start else "MemTotal")


def _cuda_memory(index: int, at_start: bool) -> int | None:
    """One GPU's memory: all of it, or its free bytes now (through NVML when it is there: no
    CUDA context in the calling process, e.g. the dashboard; else ``mem_get_info``)."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    total = int(torch.cuda.get_device_properties(index).total_memory)
    if not at_start:
        return total
    try:
        return int(total - torch.cuda.device_memory_used(index))
    except Exception:  # no nvidia-ml-py, or NVML refused
        pass
    try:
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:
        return None


def device_memory(device: str, at_start: bool = False) -> int | None:
    """A GPU's memory (total at submit, free when a run starts); None for the CPU (its memory
    is the host's) and where it cannot be told (mps)."""
    if re.fullmatch(r"cuda(:\d+)?", device):
        return _cuda_memory(int(device.partition(":")[2] or 0), at_start)
    return None


def budgets(device: str, at_start: bool = False) -> tuple[int | None, int | None]:
    """(device bytes, host bytes) a run may use: totals at submit, free memory at start.  At
    submit to the Ray executor neither is this machine's: the executor checks the plan against
    the cluster's nodes (``core.execution.cluster``)."""
    if not at_start and config.executor_name() == "ray":
        return None, None
    return device_memory(device, at_start), host_memory(at_start)


#: What to change when a part of the peak is too big, in the form's words.
ADVICE = {
    "calibration activations": "fewer Samples or fewer Tokens per sample",
    "FFN data": "fewer Samples or fewer Tokens per sample",
    "evaluation activations": "a smaller Max windows or Window length (tokens)",
    "logits": "a smaller Batch size",
    "text": "a shorter text file",
}


def _advice(parts: dict[str, int], dtype: str) -> str:
    """What would make the peak fit, from its largest part (only what the user can change)."""
    largest = max(parts, key=parts.__getitem__)
    for key, advice in ADVICE.items():
        if largest.startswith(key):
            return f"use {advice}"
    if dtype == "float32":
        return "use Weights dtype bfloat16 (half the weights' memory)"
    return "use a machine with more memory"


def memory_problems(plan: MemoryPlan, device: str, device_budget: int | None,
                    host_budget: int | None, dtype: str, at_start: bool = False) -> list[str]:
    """The plan's peaks against the budgets, worded with the numbers and what would fit."""
    found = []
    word = "free" if at_start else "in all"
    checks = [("host", plan.peak_host, host_budget, "the host's RAM")]
    if not plan.on_cpu:
        checks.insert(0, ("device", plan.peak_device, device_budget, device))
    for where, peak, budget, name in checks:
        if budget is None or peak <= budget:
            continue
        phase = plan.peak_phase(where)
        parts = phase.device if where == "device" else phase.host
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
        detail = " + ".join(f"{k} {gib(v)}" for k, v in largest if v >= GIB // 20)
        found.append(f"Memory: this run needs about {gib(peak)} of "
                     f"{'RAM' if where == 'host' else name + ' memory'} at its peak "
                     f"({phase.name}: {detail}) but {name} has {gib(budget)} {word}; "
                     f"{_advice(parts, dtype)}.")
    return found


# -- one call per kind -------------------------------------------------------------------------
def fitted_plan(cfg: Any, work: Work, device_budget: int | None, host_budget: int | None
                ) -> tuple[MemoryPlan, bool]:
    """The memory plan of ``work`` (its dtype 'auto' resolved from ``cfg``) fitted to the
    budgets: (plan, fits)."""
    dtype = config_dtype(cfg) if work.dtype == "auto" else work.dtype
    adapter = ADAPTERS.get(str(settings(cfg).get("model_type") or ""))
    shape = shape_of(cfg, adapter.family if adapter else None)
    return plan_run(shape, with_dtype(work, dtype), device_budget, host_budget)


def plan_problems(cfg: Any, work: Work, at_start: bool = False) -> list[str]:
    """The run's memory plan against the device's and the host's memory (their totals at
    submit, what is free when the run starts)."""
    device_budget, host_budget = budgets(work.device, at_start)
    try:
        plan, ok = fitted_plan(cfg, work, device_budget, host_budget)
    except (TypeError, ValueError):  # a config without the usual sizes: nothing to plan
        return []
    if ok:
        return []
    dtype = config_dtype(cfg) if work.dtype == "auto" else work.dtype
    return memory_problems(plan, work.device, device_budget, host_budget, dtype, at_start)


def model_fit_problems(model: str, *, need: str, windows: dict[str, int],
                       work: Work | None = None, trust_remote_code: bool = False) -> list[str]:
    """Every model-dependent check of a run: it resolves, suits ``need`` ('causal', 'adapter',
    'coreinfer'), its ``windows`` (label -> tokens) fit, and (given the ``work``, on a valid
    device) its memory plan fits the machine.  Later checks are skipped once the model cannot
    be used."""
    cfg, errors = load_config(model, trust_remote_code)
    if cfg is None or errors:
        return errors
    errors = architecture_problems(cfg, need)
    if errors:
        return errors
    errors = weight_problems(model) + position_problems(cfg, windows)
    if work is not None:
        errors += plan_problems(cfg, work)
    return errors


def unbounded_plan(model: str, work: Work, trust_remote_code: bool = False) -> MemoryPlan | None:
    """The run's memory plan with no budget (its needs where there is room: what a Ray task
    asks for), or None when the model's config cannot be read here."""
    cfg, _ = load_config(model, trust_remote_code)
    if cfg is None:
        return None
    try:
        return fitted_plan(cfg, work, None, None)[0]
    except (TypeError, ValueError):
        return None
