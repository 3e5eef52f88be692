"""Architecture adapters: where the decoder blocks are, which linears they hold, their FFN parts.

GPT-2 stores its projections as ``Conv1D`` with the weight transposed (``[in, out]``);
:func:`weight_matrix` and :func:`set_weight_matrix` always speak ``[out, in]``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class Adapter:
    """How to find the parts of one architecture family."""

    family: str
    blocks_path: str  # attribute path from the CausalLM to the ModuleList of decoder blocks
    ffn_up: str  # relative to a block; for SwiGLU the "up" projection
    ffn_down: str
    ffn_gate: str | None = None  # SwiGLU only
    ffn_activation: str | None = None  # attribute of the activation module (SwiGLU)
    #: Modules between the last block and the head, in order (absent ones are skipped).
    final: tuple[str, ...] = ()

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        module: nn.Module = model
        for part in self.blocks_path.split("."):
            module = getattr(module, part)
        return module  # type: ignore[return-value]

    def final_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules the last block's output goes through before the head (final norm,
        OPT's optional projection), those the model has."""
        found = []
        for path in self.final:
            with contextlib.suppress(AttributeError):
                module = model.get_submodule(path)
                if module is not None:
                    found.append(module)
        return found

    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """Every prunable linear of a block, by its name inside the block, in module order."""
        return {name: mod for name, mod in block.named_modules()
                if isinstance(mod, (nn.Linear, Conv1D))}


_LLAMA = Adapter("llama", "model.layers", "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj",
                 "mlp.act_fn", final=("model.norm",))
ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "opt": Adapter("opt", "model.decoder.layers", "fc1", "fc2",
                   final=("model.decoder.final_layer_norm", "model.decoder.project_out")),
    "gpt2": Adapter("gpt2", "transformer.h", "mlp.c_fc", "mlp.c_proj", final=("transformer.ln_f",)),
    "gpt_neox": Adapter("gpt_neox", "gpt_neox.layers", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
                        final=("gpt_neox.final_layer_norm",)),
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter of ``model``, or a clear error naming what was found."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type or "")
    if adapter is None:
        raise UnsupportedArchitecture(
            f"Unsupported architecture: {type(model).__name__} (model_type={model_type!r}). "
            f"Supported model types: {', '.join(sorted(ADAPTERS))}."
        )
    try:
        adapter.blocks(model)
    except AttributeError as exc:
        raise UnsupportedArchitecture(
            f"{type(model).__name__} (model_type={model_type!r}) has no decoder blocks at "
            f"{adapter.blocks_path!r}: {exc}"
        ) from exc
    return adapter


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a view; Conv1D is transposed)."""
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write an ``[out, in]`` matrix back into the module, keeping its dtype and layout."""
    target = module.weight.data
    value = matrix.t() if isinstance(module, Conv1D) else matrix
    target.copy_(value.to(dtype=target.dtype, device=target.device))


def prunable_names(model: nn.Module) -> list[str]:
    """Full names of every prunable linear of the model (inside the decoder blocks only)."""
    adapter = get_adapter(model)
    return [f"{adapter.blocks_path}.{i}.{name}"
            for i, block in enumerate(adapter.blocks(model))
            for name in adapter.linears(block)]
