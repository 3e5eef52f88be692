"""Checkpoints read and written one decoder block at a time.

:class:`WeightFiles` reads single tensors from a model folder's weight files (safetensors, or
pickled ``.bin`` files through ``torch.load(mmap=True)``) without loading a file whole.
:class:`LazyModel` is a model skeleton built on the meta device (its buffers real, computed from
the config): the modules outside the decoder blocks (embeddings, final norm, head) and one block
at a time get their tensors read from the files when the traversal reaches them, and give them
back (to the meta device) after.  :class:`CheckpointWriter` writes a block's tensors to their
own safetensors shard as the block is released, in the run's dtype, and finishes a folder that
transformers loads unchanged (index, config, tokenizer); it writes into a temporary folder beside
the target and renames it when complete.

Decision: the writer gives every block its own shard (``safetensors.torch.save_file``, split
where one block is over ``SHARD_BYTES``) rather than packing several blocks into 5 GB shards:
packing would hold several blocks in memory, or need a streaming safetensors writer of our own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine.adapters import Adapter, get_adapter
from core.engine.environment import free_device_cache

log = logging.getLogger(__name__)

SHARD_BYTES = 5 * 10**9
INDEX = "model.safetensors.index.json"
MARKER = "sparsebench_run.json"  # written into a save folder: which run wrote it


class CheckpointError(ValueError):
    """A model folder cannot be read block by block; the message says why."""


# -- reading ---------------------------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: safetensors where there are any, else pickled ``.bin``."""
    found = sorted(folder.glob("*.safetensors"))
    return found or sorted(p for p in folder.glob("*.bin") if p.name != "training_args.bin")


class WeightFiles:
    """Which file holds each tensor of a model folder, and single tensors read from them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        if not self.files:
            raise CheckpointError(f"The model folder {self.folder} holds no weight files "
                                  "(*.safetensors or *.bin).")
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for path in self.files:
            for name, (shape, dtype) in _tensor_index(path).items():
                self.where[name] = path
                self.shapes[name] = shape
                self.dtypes[name] = dtype

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, each read on its own (a file is never loaded whole)."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.where[name], []).append(name)
        found: dict[str, torch.Tensor] = {}
        for path, wanted in by_file.items():
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    for name in wanted:
                        found[name] = handle.get_tensor(name)
            else:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                for name in wanted:
                    found[name] = state[name].clone()
                del state
        return found


def _tensor_index(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of one weight file, from its header (safetensors) or its pickle's
    index (``.bin``, memory-mapped: nothing is read)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            out = {}
            for name in handle.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                part = handle.get_slice(name)
                out[name] = (tuple(part.get_shape()), _DTYPES[part.get_dtype()])
            return out
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:  # an old (non-zip) pickle cannot be memory-mapped
        raise CheckpointError(f"{path.name} is a pickled checkpoint in the old format, which "
                              f"cannot be read tensor by tensor: {exc}") from exc
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()
            if isinstance(t, torch.Tensor)}


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


# -- the skeleton ----------------------------------------------------------------------------------
def skeleton(config: Any, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM of ``config`` with every parameter on the meta device (no memory), its
    buffers (rotary frequencies) real on the CPU, in eval mode, ``use_cache`` off."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    if _ties_embeddings(model):
        model.tie_weights()  # the head is the input embedding: named (and read) once
    model.eval()
    model.config.use_cache = False
    return model


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[attr] = nn.Parameter(value, requires_grad=False)


def _ties_embeddings(model: nn.Module) -> bool:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


@dataclass
class Loaded:
    """What the loader has materialised, for the one-block-at-a-time check."""

    blocks: set[int] = field(default_factory=set)
    most_blocks: int = 0  # the most blocks ever held at once
    reads: int = 0  # tensors read from the files


class LazyModel:
    """A causal LM whose weights stay in its files until the traversal needs them.

    ``dtype`` is the run's weight dtype (tensors are rounded to it when read); ``compute_dtype``
    the dtype a block is computed in (fp32 on a CPU without native half arithmetic).  At most
    one decoder block is materialised at a time: loading a second one is an error."""

    def __init__(self, folder: str | Path, dtype: torch.dtype, compute_dtype: torch.dtype | None
                 = None, trust_remote_code: bool = False) -> None:
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.files = WeightFiles(self.folder)
        config = AutoConfig.from_pretrained(self.folder, trust_remote_code=trust_remote_code)
        self.dtype = dtype
        self.compute_dtype = compute_dtype or dtype
        self.model = skeleton(config, dtype, trust_remote_code)
        self.adapter: Adapter = get_adapter(self.model)
        self.keys = self._checkpoint_keys()
        self.loaded = Loaded()
        self.writer: CheckpointWriter | None = None

    # -- names --------------------------------------------------------------------------------
    def _checkpoint_keys(self) -> dict[str, str]:
        """{parameter or persistent buffer name: the checkpoint's name for it}, through
        transformers' own renamings of old checkpoint names (GPT-NeoX's ``embed_out``, a base
        model's missing prefix in OPT and GPT-2 checkpoints).  A tied head is left out; a
        tensor the checkpoint stores in another shape (fused experts) or lacks is an error."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(self.model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
        wanted = dict.fromkeys(self.tensor_names(), True)  # transformers looks for non-None
        keys: dict[str, str] = {}
        for key in self.files.where:
            name, converted = rename_source_key(key, renamings, converters,
                                                self.model.base_model_prefix, wanted)
            if converted is not None:
                raise CheckpointError(f"{self.folder} stores {key!r} in a layout transformers "
                                      "converts when loading; it cannot be read block by block.")
            if name in wanted:
                keys[name] = key
        head = self.head_name()
        missing = [n for n in wanted if n not in keys
                   and not (n == head and _ties_embeddings(self.model))]
        if missing:
            raise CheckpointError(f"The weights of {self.folder} lack {len(missing)} tensor(s) "
                                  f"the model needs, e.g. {missing[:3]}.")
        return {name: keys[name] for name in wanted if name in keys}

    def tensor_names(self) -> list[str]:
        """The model's parameter names (tied ones once) and persistent buffers."""
        names = [n for n, _ in self.model.named_parameters()]
        persistent = {f"{m}.{b}" if m else b for m, mod in self.model.named_modules()
                      for b in mod._buffers if b not in mod._non_persistent_buffers_set}
        return names + sorted(persistent - set(names))

    def head_name(self) -> str | None:
        """The output head's weight name (``lm_head.weight``), or None without a head."""
        head = self.model.get_output_embeddings()
        found = next((name for name, module in self.model.named_modules() if module is head),
                     None) if head is not None else None
        return None if found is None else f"{found}.weight"

    def block_prefix(self, index: int) -> str:
        return f"{self.adapter.blocks_path}.{index}."

    def names_of_block(self, index: int) -> list[str]:
        prefix = self.block_prefix(index)
        return [n for n in self.keys if n.startswith(prefix)]

    def outside_names(self) -> list[str]:
        blocks = self.adapter.blocks_path + "."
        return [n for n in self.keys if not n.startswith(blocks)]

    @property
    def n_blocks(self) -> int:
        return len(self.adapter.blocks(self.model))

    # -- loading ------------------------------------------------------------------------------
    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors in the run's dtype (floating ones), on the CPU."""
        raw = self.files.read(self.keys[n] for n in names)
        self.loaded.reads += len(names)
        return {n: _rounded(raw[self.keys[n]], self.dtype) for n in names}

    def _place(self, names: list[str], device: torch.device | str) -> None:
        read = self.read(names)
        for name in names:  # each read tensor is dropped once placed: one extra copy at most
            value = read.pop(name)
            value = value.to(device=device, dtype=self._compute(value))
            owner, _, attr = name.rpartition(".")
            module = self.model.get_submodule(owner) if owner else self.model
            if attr in module._buffers:
                module._buffers[attr] = value
            else:
                _set_parameter(self.model, name, value)

    def _compute(self, value: torch.Tensor) -> torch.dtype:
        return self.compute_dtype if value.is_floating_point() else value.dtype

    def load_outside(self, device: torch.device | str) -> None:
        """Materialise everything outside the decoder blocks (embeddings, final norm, head) on
        ``device``; a tied head shares the input embedding."""
        self._place(self.outside_names(), device)
        head = self.model.get_output_embeddings()
        if head is not None and head.weight.is_meta and _ties_embeddings(self.model):
            head.weight = self.model.get_input_embeddings().weight
        for name, buf in list(self.model.named_buffers()):
            if not name.startswith(self.adapter.blocks_path + "."):
                owner, _, attr = name.rpartition(".")
                self.model.get_submodule(owner)._buffers[attr] = buf.to(device)

    def release_outside(self) -> None:
        """Give the outside tensors back (to the meta device)."""
        for name in self.outside_names():
            self._drop(name)
        head = self.model.get_output_embeddings()
        if head is not None and not head.weight.is_meta:
            head.weight = nn.Parameter(torch.empty_like(head.weight, device="meta"),
                                       requires_grad=False)

    def load_block(self, index: int, device: torch.device | str) -> nn.Module:
        """Decoder block ``index`` with its tensors read, on ``device`` in the compute dtype."""
        if self.loaded.blocks - {index}:
            raise RuntimeError(f"block {index} asked for while block(s) "
                               f"{sorted(self.loaded.blocks)} are materialised: the loader "
                               "holds one block at a time")
        self._place(self.names_of_block(index), device)
        block = self.adapter.blocks(self.model)[index]
        for key, buf in block.named_buffers():  # non-persistent buffers follow the block
            owner, _, attr = key.rpartition(".")
            (block.get_submodule(owner) if owner else block)._buffers[attr] = buf.to(device)
        self.loaded.blocks.add(index)
        self.loaded.most_blocks = max(self.loaded.most_blocks, len(self.loaded.blocks))
        return block

    def settle(self, index: int) -> None:
        """Round a computing block's weights to the run's dtype (a no-op when they are the
        same), so the next block sees exactly the weights that will be written."""
        if self.compute_dtype == self.dtype:
            return
        for param in self.adapter.blocks(self.model)[index].parameters():
            if param.is_floating_point():
                param.data = param.data.to(self.dtype).to(self.compute_dtype)

    def release_block(self, index: int, write: bool = False) -> None:
        """Give block ``index``'s tensors back; with ``write``, first hand them to the writer."""
        if write and self.writer is not None:
            self.writer.write({name: self.tensor(name) for name in self.names_of_block(index)})
        for name in self.names_of_block(index):
            self._drop(name)
        self.loaded.blocks.discard(index)
        free_device_cache()

    def tensor(self, name: str) -> torch.Tensor:
        """The model's parameter or buffer ``name`` as it is now."""
        owner, _, attr = name.rpartition(".")
        module = self.model.get_submodule(owner) if owner else self.model
        value = module._parameters.get(attr)
        return (value if value is not None else module._buffers[attr]).detach()

    def _drop(self, name: str) -> None:
        owner, _, attr = name.rpartition(".")
        module = self.model.get_submodule(owner) if owner else self.model
        current = module._parameters.get(attr)
        if current is not None and not current.is_meta:
            meta = torch.empty(current.shape, dtype=self.dtype if current.is_floating_point()
                               else current.dtype, device="meta")
            module._parameters[attr] = nn.Parameter(meta, requires_grad=False)

    @contextlib.contextmanager
    def block(self, index: int, device: torch.device | str | None, write: bool = False
              ) -> Iterator[nn.Module]:
        """``load_block`` (on the CPU for ``device`` None) for the body of a with statement,
        ``release_block`` after it."""
        block = self.load_block(index, "cpu" if device is None else device)
        try:
            yield block
            self.settle(index)  # what is written is what was computed with (idempotent)
        except BaseException:
            write = False
            raise
        finally:
            self.release_block(index, write=write)

    @contextlib.contextmanager
    def outside(self, device: torch.device | str) -> Iterator[nn.Module]:
        self.load_outside(device)
        try:
            yield self.model
        finally:
            self.release_outside()
            free_device_cache()


def move_into_place(partial: Path, target: Path) -> Path:
    """Rename the complete folder ``partial`` to ``target``; a folder already at ``target`` is
    removed only once the new one is whole."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(target)
    return target


def _rounded(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value


# -- writing ---------------------------------------------------------------------------------------
class CheckpointWriter:
    """A model folder written block by block: each block's tensors go to their own shard(s) as
    the block is released; :meth:`finish` copies what was never written from the source (the
    outside tensors, blocks left untouched), writes the index, config and tokenizer, and moves
    the folder into place."""

    def __init__(self, source: LazyModel, target: Path) -> None:
        self.source = source
        self.target = Path(target)
        self.partial = self.target.with_name(f".{self.target.name}.partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.groups = self._groups()
        self.written: dict[str, str] = {}  # checkpoint name -> shard file name
        self.total = 0

    def _groups(self) -> list[list[str]]:
        """Tensor names by shard: the outside tensors, then each block's, split at
        ``SHARD_BYTES``."""
        head = self.source.head_name()
        tied = _ties_embeddings(self.source.model)
        outside = [n for n in self.source.outside_names() if not (tied and n == head)]
        parts = [outside] + [self.source.names_of_block(i) for i in range(self.source.n_blocks)]
        groups: list[list[str]] = []
        for names in parts:
            size, group = 0, []
            for name in names:
                nbytes = self._nbytes(name)
                if group and size + nbytes > SHARD_BYTES:
                    groups.append(group)
                    size, group = 0, []
                group.append(name)
                size += nbytes
            if group:
                groups.append(group)
        return groups

    def _nbytes(self, name: str) -> int:
        shape = self.source.files.shapes[self.source.keys[name]]
        size = torch.Size(shape).numel()
        raw = self.source.files.dtypes[self.source.keys[name]]
        dtype = self.source.dtype if raw.is_floating_point else raw
        return size * torch.empty((), dtype=dtype).element_size()

    def shard_name(self, number: int) -> str:
        return f"model-{number + 1:05d}-of-{len(self.groups):05d}.safetensors"

    def write(self, state: dict[str, torch.Tensor]) -> None:
        """Write these tensors (a block's, whole) in the run's dtype to their shard(s)."""
        from safetensors.torch import save_file

        for number, group in enumerate(self.groups):
            if not group or group[0] not in state or self.source.keys[group[0]] in self.written:
                continue
            tensors = {self.source.keys[n]: _rounded(state[n].detach(), self.source.dtype)
                       .to("cpu").contiguous() for n in group}
            name = self.shard_name(number)
            save_file(tensors, str(self.partial / name), metadata={"format": "pt"})
            self.total += sum(t.numel() * t.element_size() for t in tensors.values())
            self.written.update({self.source.keys[n]: name for n in group})

    def finish(self, tokenizer: Any = None, marker: dict[str, Any] | None = None) -> Path:
        """Copy what was never written, write the index, config, tokenizer and ``marker``
        (``sparsebench_run.json``: what wrote the folder), and rename the folder into place (a
        folder already there is replaced only after this one is whole)."""
        for group in self.groups:
            if self.source.keys[group[0]] not in self.written:
                self.write(self.source.read(group))
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(
            self.written.items()))}
        (self.partial / INDEX).write_text(json.dumps(index, indent=2))
        config = self.source.model.config
        config.dtype = self.source.dtype
        config.save_pretrained(self.partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.partial)
        if (self.source.folder / "generation_config.json").is_file():
            shutil.copy2(self.source.folder / "generation_config.json", self.partial)
        if marker is not None:
            (self.partial / MARKER).write_text(json.dumps(marker, indent=2))
        return move_into_place(self.partial, self.target)

    def abandon(self) -> None:
        """Remove the partial folder (the run failed or was cancelled)."""
        shutil.rmtree(self.partial, ignore_errors=True)
