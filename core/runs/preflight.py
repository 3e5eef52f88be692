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
* the estimated peak memory fits the free memory of the device.

Each check reads at most a ``config.json`` and the first 64 KiB of a text file.  The offline
default model is known good: its configuration is written down here, nothing is loaded.

Decisions
---------
Tokens of a text file are bounded, not counted: with every tokenizer of the supported families
(byte-level BPE, SentencePiece with byte fallback) a token stands for at least one byte of UTF-8,
so a file of N bytes gives at most about N tokens.  A file refused by this bound is certainly too
short; one that passes may still be short (English runs about 4 bytes a token), which the run
reports when it tokenizes.  No tokenizer is loaded and nothing valid is refused.

Memory (:func:`estimate_memory`): model = parameters counted from the config x dtype bytes; block
inputs = samples x seqlen x hidden x dtype bytes x 2 (a block's inputs and outputs are held at
once); method state for one block: Wanda an fp32 vector per linear, SparseGPT an fp32
``in x in`` Hessian per linear, SparseLLM those Hessians plus the FFN's fp32 inputs and outputs on
every calibration token, magnitude nothing.  The sum is compared with the device's free memory
(cpu: ``MemAvailable``; cuda: free bytes of that GPU).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core import config
from core.engine import data
from core.engine.activation.coreinfer import SUPPORTED_FAMILIES
from core.engine.adapters import ADAPTERS
from core.runs.specs import looks_like_path

GIB = 2**30
HEAD_BYTES = 64 * 1024
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
HUB_TIMEOUT_S = 3.0
#: The offline default's configuration (SmolLM2-135M-Instruct, read from its GGUF header).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    config.DEFAULT_MODEL: {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True,
    },
}
ENCODER_ONLY = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                "deberta-v2", "mpnet", "camembert", "modernbert")
#: Linears of one block whose input is the hidden state (the FFN's output linear reads the
#: intermediate width): q, k, v, o, gate, up for the Llama family; q, k, v, out, fc1 for OPT.
HIDDEN_INPUT_LINEARS = {"llama": 6, "opt": 5, "gpt2": 3, "gpt_neox": 3}
#: The extra state a method keeps per block: none, a vector or a Hessian per linear.
METHOD_STATE = {"magnitude": "none", "wanda": "vector", "sparsegpt": "hessian",
                "sparsellm": "hessian+ffn"}
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
    """Ask the hub whether ``repo_id`` exists (short timeout); any network error: no problem."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return []  # it exists; access is the token's business
    except RepositoryNotFoundError:
        return [f"Model: {repo_id!r} is not on the Hugging Face hub (or is private and this "
                f"machine is not logged in); check the spelling or {ALLOWED_MODELS}."]
    except Exception:  # no network, timeout, hub error: cannot check here
        return []
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


# -- what the config says ----------------------------------------------------------------------
def settings(cfg: Any) -> dict[str, Any]:
    """The config's values as a dict (a transformers config or its raw JSON)."""
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


def first(values: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` set in ``values`` (configs spell the same size differently)."""
    return next((values[n] for n in names if values.get(n) is not None), default)


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


def positions_of(cfg: Any) -> tuple[int, str] | None:
    """(positions, the config key that says so), or None when the config does not say."""
    values = settings(cfg)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(values.get(key), int) and values[key] > 0:
            return values[key], key
    return None


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


# -- memory --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The calibration a pruning run does: method, samples x seqlen tokens."""

    method: str
    samples: int
    seqlen: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs at its peak, by part."""

    model: int
    block_inputs: int = 0
    method_state: int = 0

    @property
    def total(self) -> int:
        """Everything, in bytes."""
        return self.model + self.block_inputs + self.method_state


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that decide its memory."""

    family: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    attention: int  # query width (heads x head dim)
    kv: int  # key / value width
    tied: bool
    learned_positions: int  # GPT-2 / OPT position embeddings (0 for rotary models)


def shape_of(cfg: Any) -> Shape:
    """The sizes from a config, whatever names the architecture uses for them."""
    values = settings(cfg)
    model_type = str(values.get("model_type") or getattr(cfg, "model_type", ""))
    hidden = int(first(values, "hidden_size", "n_embd", "d_model"))
    heads = int(first(values, "num_attention_heads", "n_head", default=1))
    head_dim = int(first(values, "head_dim", default=hidden // heads))
    kv_heads = int(first(values, "num_key_value_heads", default=heads))
    adapter = ADAPTERS.get(model_type)
    positions = positions_of(cfg)
    return Shape(
        family=adapter.family if adapter else model_type, hidden=hidden,
        layers=int(first(values, "num_hidden_layers", "n_layer", "num_layers")),
        intermediate=int(first(values, "intermediate_size", "ffn_dim", "n_inner",
                               default=4 * hidden)),
        vocab=int(first(values, "vocab_size", default=0)), attention=heads * head_dim,
        kv=kv_heads * head_dim, tied=bool(values.get("tie_word_embeddings", True)),
        learned_positions=positions[0] if positions and model_type in ("gpt2", "opt") else 0)


def parameter_count(shape: Shape) -> int:
    """Weights of the model (biases and norms left out: well under 1%)."""
    gated = shape.family == "llama"  # SwiGLU: gate, up and down
    attention = 2 * shape.hidden * shape.attention + 2 * shape.hidden * shape.kv
    ffn = (3 if gated else 2) * shape.hidden * shape.intermediate
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    return embeddings + shape.learned_positions * shape.hidden + shape.layers * (attention + ffn)


def method_state_bytes(method: str, shape: Shape, tokens: int) -> int:
    """fp32 statistics one block's linears hold while it is pruned (all at once)."""
    inputs = [shape.hidden] * HIDDEN_INPUT_LINEARS.get(shape.family, 4) + [shape.intermediate]
    state = METHOD_STATE.get(method, "vector")
    if state == "none":
        return 0
    if state == "vector":
        return 4 * sum(inputs)
    hessians = 4 * sum(n * n for n in inputs)
    if state == "hessian+ffn":  # the FFN's input X, the output linear's input p and output Y
        hessians += 4 * tokens * (2 * shape.hidden + shape.intermediate)
    return hessians


def estimate_memory(shape: Shape, dtype: str, calibration: Calibration | None = None
                    ) -> MemoryEstimate:
    """Peak bytes of a run on ``shape`` in ``dtype``: the model, and for a pruning run the
    calibration block inputs (inputs and outputs of a block) and the method's state."""
    size = DTYPE_BYTES.get(dtype, 4)
    model = parameter_count(shape) * size
    if calibration is None:
        return MemoryEstimate(model)
    tokens = calibration.samples * calibration.seqlen
    return MemoryEstimate(model, 2 * tokens * shape.hidden * size,
                          method_state_bytes(calibration.method, shape, tokens))


def _cpu_available() -> int | None:
    """Available RAM: psutil, else ``MemAvailable`` of /proc/meminfo."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cuda_free(index: int) -> int | None:
    """Free bytes of one GPU: through NVML when it is there (no CUDA context in the calling
    process, e.g. the dashboard), else ``torch.cuda.mem_get_info``."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    try:
        total = torch.cuda.get_device_properties(index).total_memory
        return int(total - torch.cuda.device_memory_used(index))
    except Exception:  # no nvidia-ml-py, or NVML refused
        pass
    try:
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:
        return None


def free_memory(device: str) -> int | None:
    """Free bytes of ``device`` now, or None when it cannot be told (mps, unknown)."""
    if device == "cpu":
        return _cpu_available()
    if re.fullmatch(r"cuda(:\d+)?", device):
        return _cuda_free(int(device.partition(":")[2] or 0))
    return None


def memory_problems(estimate: MemoryEstimate, device: str) -> list[str]:
    """The estimate against the device's free memory, worded with every number."""
    free = free_memory(device)
    if free is None or estimate.total <= free:
        return []
    advice = ("use fewer samples or a shorter seqlen"
              if estimate.block_inputs + estimate.method_state > estimate.model
              else "use float16 or bfloat16, a smaller model or a device with more memory")
    return [f"Memory: this run needs about {estimate.total / GIB:.1f} GiB (model "
            f"{estimate.model / GIB:.1f} GiB + block inputs {estimate.block_inputs / GIB:.1f} "
            f"GiB + method state {estimate.method_state / GIB:.1f} GiB) but {device} has "
            f"{free / GIB:.1f} GiB free; {advice}."]


# -- one call per kind -------------------------------------------------------------------------
def model_fit_problems(model: str, *, need: str, windows: dict[str, int], dtype: str,
                       device: str | None, trust_remote_code: bool = False,
                       calibration: Calibration | None = None) -> list[str]:
    """Every model-dependent check of a run: it resolves, suits ``need`` ('causal', 'adapter',
    'coreinfer'), its ``windows`` (label -> tokens) fit, and (on a valid ``device``) it fits in
    memory.  Later checks are skipped once the model cannot be used."""
    cfg, errors = load_config(model, trust_remote_code)
    if cfg is None or errors:
        return errors
    errors = architecture_problems(cfg, need)
    if errors:
        return errors
    errors = position_problems(cfg, windows)
    try:
        shape = shape_of(cfg)
    except (TypeError, ValueError):  # a config without the usual sizes: nothing to estimate
        return errors
    if device is not None:
        errors += memory_problems(estimate_memory(shape, dtype, calibration), device)
    return errors
