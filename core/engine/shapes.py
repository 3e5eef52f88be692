"""The shapes of the published models this tool's tables show, as transformers configs (no
weights): what the memory plan is checked against, and what ``bench/scale_bench.py`` writes
random-weight checkpoints of.  Sizes from the models' own ``config.json`` on the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1,
          "eos_token_id": 2}

SHAPES: dict[str, dict[str, Any]] = {
    "llama-2-7b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096, "dtype": "float16"},
    "llama-3-8b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "vocab_size": 128256, "max_position_embeddings": 8192,
                   "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
                   "dtype": "bfloat16"},
    "llama-2-13b": {**_LLAMA, "hidden_size": 5120, "intermediate_size": 13824,
                    "num_hidden_layers": 40, "num_attention_heads": 40,
                    "num_key_value_heads": 40, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "dtype": "float16"},
    "opt-13b": {"model_type": "opt", "architectures": ["OPTForCausalLM"], "hidden_size": 5120,
                "ffn_dim": 20480, "num_hidden_layers": 40, "num_attention_heads": 40,
                "vocab_size": 50272, "max_position_embeddings": 2048,
                "word_embed_proj_dim": 5120, "do_layer_norm_before": True,
                "activation_function": "relu", "enable_bias": True, "bos_token_id": 2,
                "eos_token_id": 2, "pad_token_id": 1, "dtype": "float16"},
    "llama-2-70b": {**_LLAMA, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "dtype": "float16"},
    "llama-3.2-1b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "tie_word_embeddings": True,
                     "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
                     "dtype": "bfloat16"},
}


def config_of(name: str, blocks: int | None = None, dtype: str | None = None) -> Any:
    """The transformers config of a named shape (``blocks``: only the first decoder blocks;
    ``dtype``: the dtype its checkpoint is written in)."""
    from transformers import AutoConfig

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    values = dict(SHAPES[name])
    model_type = values.pop("model_type")
    if blocks is not None:
        values["num_hidden_layers"] = blocks
    if dtype is not None:
        values["dtype"] = dtype
    return AutoConfig.for_model(model_type, **values)


def write_random_checkpoint(folder: Path, shape: str, blocks: int | None = None,
                            dtype: str = "bfloat16", seed: int = 0) -> Path:
    """A checkpoint of ``shape`` with random weights (normal 0.02, norms 1, biases 0), one
    safetensors shard per decoder block, as transformers writes and reads it; a folder already
    holding one is reused.  Memory: one block's tensors at a time."""
    import torch
    from safetensors.torch import save_file

    from core.engine import models
    from core.engine.checkpoint import INDEX, skeleton

    if (folder / INDEX).is_file():
        return folder
    config = config_of(shape, blocks, dtype)
    torch_dtype = models.DTYPES[dtype]
    model = skeleton(config, torch_dtype)
    groups = _shard_groups(model, "model.decoder.layers." if config.model_type == "opt"
                           else "model.layers.")
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    weight_map, total = {}, 0
    for number, group in enumerate(groups):
        file = f"model-{number + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _random(tuple(params[n].shape), n, torch_dtype, generator) for n in group}
        save_file(tensors, str(partial / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(group, file))
    (partial / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                             "weight_map": weight_map}))
    config.save_pretrained(partial)
    partial.rename(folder)
    return folder


def _shard_groups(model: Any, blocks_path: str) -> list[list[str]]:
    """Parameter names by shard: those outside the blocks, then each block's."""
    depth = blocks_path.count(".") + 1  # 'model.layers.7'
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        key = ".".join(name.split(".")[:depth]) if name.startswith(blocks_path) else ""
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _random(shape: tuple[int, ...], name: str, dtype: Any, generator: Any) -> Any:
    import torch

    if len(shape) == 1:
        return (torch.ones if "norm" in name else torch.zeros)(shape, dtype=dtype)
    return torch.empty(shape).normal_(0, 0.02, generator=generator).to(dtype)
