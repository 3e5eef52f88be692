"""The checkpoint read one block at a time gives what the model held whole gives.

Tiny Llama, Qwen2, OPT and GPT-2 models are saved as safetensors; every method and pattern (OWL
included) prunes them twice: in memory (``Resident``) and from their files a block at a time
(``LazyModel``, writing the pruned checkpoint block by block).  Masks, weights, measured
sparsity and perplexities must be identical, the loader must never hold two blocks, and the
written checkpoint must load in transformers with the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from core.engine import checkpoint
from core.engine.checkpoint import CheckpointError, CheckpointWriter, LazyModel
from core.engine.evaluate.perplexity import blockwise_perplexity, perplexity
from core.engine.prune.methods import Target, get_method
from core.engine.prune.owl import OWL
from core.engine.prune.runner import prune_model

FAMILIES = ["llama", "qwen2", "opt", "gpt2"]
#: (family, method, target, OWL): every method and pattern on every family (SparseLLM has no
#: GPT-2 FFN: it refuses GPT-2, tested in test_sparsellm), OWL with each method it serves.
CASES = [(family, method, target, False) for family in FAMILIES
         for method in ("magnitude", "wanda", "sparsegpt", "sparsellm")
         for target in ("0.5", "2:4") if not (method == "sparsellm" and family == "gpt2")] + [
    (family, method, "0.5", True) for family in FAMILIES
    for method in ("magnitude", "wanda", "sparsegpt")]


def saved(arch, folder: Path, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module,
                                                                           Path]:
    model = arch.build()
    model.to(dtype).save_pretrained(folder)
    return model.float() if dtype == torch.float32 else model, folder


def eval_ids() -> torch.Tensor:
    return torch.randint(0, 128, (16 * 7,), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize(("family", "method", "target", "owl"), CASES)
def test_block_by_block_equals_the_model_held_whole(archs, calibration, tmp_path, family,
                                                    method, target, owl):
    arch = archs[family]
    model, folder = saved(arch, tmp_path / "model")

    def fresh():
        return get_method(method, **({"owl": OWL(M=3.0)} if owl else {}))

    whole = prune_model(model, fresh(), Target.parse(target), calibration)
    lazy = LazyModel(folder, torch.float32)
    lazy.writer = CheckpointWriter(lazy, tmp_path / "pruned")
    blockwise = prune_model(lazy, fresh(), Target.parse(target), calibration)
    written = lazy.writer.finish()
    assert lazy.loaded.most_blocks == 1  # never two blocks' weights at once
    assert blockwise.linears == whole.linears and blockwise.block_targets == whole.block_targets
    assert blockwise.notes == whole.notes
    reloaded = AutoModelForCausalLM.from_pretrained(written).eval()
    for (name, mine), theirs in zip(model.state_dict().items(), reloaded.state_dict().values(),
                                    strict=True):
        assert torch.equal(mine, theirs), name  # the same masks and the same updated weights
    ids = eval_ids()
    assert blockwise_perplexity(LazyModel(written, torch.float32), ids, 16, 3).window_nlls == \
        perplexity(model, ids, 16, 3).window_nlls


@pytest.mark.parametrize("family", FAMILIES + ["gpt_neox"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_blockwise_perplexity_equals_the_whole_forward(archs, tmp_path, family, batch_size):
    model, folder = saved(archs[family], tmp_path / "model")
    ids = eval_ids()
    whole = perplexity(model, ids, 16, batch_size)
    for result in (blockwise_perplexity(model, ids, 16, batch_size),
                   blockwise_perplexity(LazyModel(folder, torch.float32), ids, 16, batch_size,
                                        store="cpu")):
        assert result.windows == whole.windows == 7
        assert result.value == pytest.approx(whole.value, rel=1e-5)
        assert result.window_nlls == pytest.approx(whole.window_nlls, rel=1e-5)


def test_the_loader_holds_one_block_and_gives_weights_back(archs, tmp_path):
    _, folder = saved(archs["llama"], tmp_path / "model")
    lazy = LazyModel(folder, torch.float32)
    assert all(p.is_meta for p in lazy.model.parameters())  # the skeleton holds no weights
    with lazy.block(0, "cpu") as block:
        assert not any(p.is_meta for p in block.parameters())
        with pytest.raises(RuntimeError, match="one block at a time"):
            lazy.load_block(1, "cpu")
    assert all(p.is_meta for p in lazy.model.parameters())
    with lazy.outside("cpu") as model:
        assert not model.get_input_embeddings().weight.is_meta
    assert all(p.is_meta for p in lazy.model.parameters())


def test_the_written_checkpoint_keeps_its_dtype_shards_and_marker(archs, calibration,
                                                                   tmp_path, monkeypatch):
    """A bf16 checkpoint pruned in fp32 (as a CPU without native bf16 computes it) is written
    in bf16, one shard per block (a block over the shard size split further), with a complete
    index; the weights the next block saw are the bf16 ones written."""
    _, folder = saved(archs["llama"], tmp_path / "model", torch.bfloat16)
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 40_000)  # a block is ~100 KB in bf16
    lazy = LazyModel(folder, torch.bfloat16, torch.float32)
    lazy.writer = CheckpointWriter(lazy, tmp_path / "out")
    prune_model(lazy, get_method("sparsegpt"), Target(0.5), calibration)
    out = lazy.writer.finish(marker={"identity": "abc"})
    index = json.loads((out / checkpoint.INDEX).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards and len(shards) > 3
    for shard in shards:
        assert (out / shard).stat().st_size < 40_000 + 4096  # its tensors' bytes and a header
        with safe_open(str(out / shard), "pt") as handle:
            names = list(handle.keys())  # noqa: SIM118 - a safe_open handle is not a dict
            assert all(handle.get_slice(k).get_dtype() in ("BF16", "I64") for k in names)
    assert json.loads((out / checkpoint.MARKER).read_text()) == {"identity": "abc"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".*partial"))  # renamed into place
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert reloaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert 0.49 < float((reloaded.model.layers[1].mlp.up_proj.weight == 0).float().mean()) < 0.52


def test_an_abandoned_write_leaves_nothing(archs, tmp_path):
    _, folder = saved(archs["opt"], tmp_path / "model")
    lazy = LazyModel(folder, torch.float32)
    writer = CheckpointWriter(lazy, tmp_path / "out")
    with lazy.block(0, "cpu", write=False):
        pass
    writer.abandon()
    assert not (tmp_path / "out").exists() and not writer.partial.exists()


def test_old_checkpoint_names_are_read_through_transformers_renamings(archs, tmp_path):
    """An OPT checkpoint of the base model ('decoder.layers...', as on the hub) and GPT-NeoX's
    'embed_out' load block by block as from_pretrained loads them."""
    model, folder = saved(archs["opt"], tmp_path / "opt")
    state = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    ids = eval_ids()
    expected = perplexity(model, ids, 16, 2).value
    assert blockwise_perplexity(LazyModel(folder, torch.float32), ids, 16, 2).value == \
        pytest.approx(expected, rel=1e-6)
    neox, neox_folder = saved(archs["gpt_neox"], tmp_path / "neox")
    with safe_open(str(neox_folder / "model.safetensors"), "pt") as handle:
        assert "embed_out.weight" in list(handle.keys())  # noqa: SIM118 - not a dict
    assert blockwise_perplexity(LazyModel(neox_folder, torch.float32), ids, 16, 2).value == \
        pytest.approx(perplexity(neox, ids, 16, 2).value, rel=1e-6)


def test_a_folder_without_weights_or_with_missing_tensors_is_refused(archs, tmp_path):
    _, folder = saved(archs["llama"], tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lack 1 tensor"):
        LazyModel(folder, torch.float32)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight files"):
        LazyModel(folder, torch.float32)


def test_a_block_computed_in_fp32_is_rounded_before_the_next_block_sees_it(
        archs, calibration, tmp_path, monkeypatch):
    """bf16 weights computed in fp32: each pruned block's weights are rounded to bf16 (as
    they are written) before its outputs feed the next block."""
    from core.engine.prune import runner

    _, folder = saved(archs["llama"], tmp_path / "model", torch.bfloat16)
    lazy = LazyModel(folder, torch.bfloat16, torch.float32)
    events = []
    settle, forward = lazy.settle, runner.Traversal.forward

    def settled(index):
        block = lazy.adapter.blocks(lazy.model)[index]
        settle(index)
        events.append(("settle", index, all(torch.equal(p, p.to(torch.bfloat16).float())
                                            for p in block.parameters())))

    monkeypatch.setattr(lazy, "settle", settled)
    monkeypatch.setattr(runner.Traversal, "forward", lambda self, block, inputs: (
        events.append(("forward", None, None)), forward(self, block, inputs))[1])
    prune_model(lazy, get_method("sparsegpt"), Target(0.5), calibration)
    assert events[:2] == [("settle", 0, True), ("forward", None, None)]
    assert ("settle", 1, True) in events
