"""Preflight: a run that cannot work is refused before anything is queued, worded with the field
and what is allowed -- by ``check`` (the forms, the command line) and by ``jobs.submit`` (which
then stores nothing).  Only config.json files and the first bytes of text files are read; the hub
is offline here and never asked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from transformers import BertConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, T5Config

from core.engine import plan
from core.execution import jobs
from core.runs import preflight
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.prune import PruneSpec
from core.runs.kinds.search import SearchSpec
from core.runs.specs import check
from core.store.db import Store
from tests.tiny_assets import SAMPLE_TEXT, tiny_llama_folder

SUPPORTED = "supported: llama, mistral, qwen2, qwen3, opt, gpt2, gpt_neox."


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub is off: any hub id must come from the local cache (nothing is downloaded)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("preflight")
    corpus = root / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT, encoding="utf-8")
    GPT2LMHeadModel(GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=4,
                               n_positions=64)).save_pretrained(root / "gpt2")
    T5Config(vocab_size=200, d_model=32, d_ff=64, num_layers=2, num_heads=4).save_pretrained(
        root / "t5")
    BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64).save_pretrained(root / "bert")
    (root / "no-config").mkdir()
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "model.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + bytes(range(256)) * 4)
    (root / "empty.txt").write_bytes(b"")
    return {"llama": str(tiny_llama_folder(root / "llama")), "gpt2": str(root / "gpt2"),
            "t5": str(root / "t5"), "bert": str(root / "bert"),
            "no-config": str(root / "no-config"), "corpus": str(corpus),
            "png": str(root / "picture.png"), "gguf": str(root / "model.gguf"),
            "empty": str(root / "empty.txt")}


def prune_values(assets: dict[str, str], **change: Any) -> dict[str, Any]:
    """A tiny valid Wanda run on the local Llama folder and text file, with ``change``."""
    values = dict(model=assets["llama"], method="wanda", sparsity="0.5",
                  calibration=assets["corpus"], samples=2, seqlen=32,
                  ppl_datasets=[assets["corpus"]], ppl_seqlen=32, max_windows=2, batch_size=1)
    return {**values, **change}


def refused(tmp_path: Path, cls: type, values: dict[str, Any], part: str) -> list[str]:
    """``check`` words the problem; a spec built from ``values`` (the fields are valid) is
    refused by ``jobs.submit`` and the store stays empty."""
    spec, problems = check(cls, values)
    assert spec is None and any(part in p for p in problems), problems
    store = Store(tmp_path / "r.duckdb").init()
    with pytest.raises(ValueError, match=re.escape(part)):
        jobs.submit(store, cls(**values))
    assert store.runs().empty
    return problems


# -- the model resolves ---------------------------------------------------------------------------
def test_a_hub_id_with_a_typo_is_refused_offline(tmp_path: Path, assets: dict[str, str]) -> None:
    problems = refused(tmp_path, PruneSpec, prune_values(assets, model="meta-llama/Llama-2-7b-hfx"),
                       "Model: 'meta-llama/Llama-2-7b-hfx' is not in the local Hugging Face "
                       "cache and the hub is offline here")
    assert len(problems) == 1 and "smollm2-135m" in problems[0]


def test_a_cached_hub_id_is_read_from_the_cache(tmp_path: Path, assets: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-gpt2" / "snapshots" / ("0" * 40)
    GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=4).save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert check(PruneSpec, prune_values(assets, model="someone/tiny-gpt2"))[1] == []
    problems = check(ActivationSpec, {"model": "someone/tiny-gpt2",
                                      "ppl_datasets": [assets["corpus"]], "ppl_seqlen": 32})[1]
    assert problems == ["Model: CoreInfer supports the Llama family and OPT, not 'gpt2'; use a "
                        "model of type llama, mistral, qwen2, qwen3, opt."]


def test_online_the_hub_is_asked_once_and_an_unreachable_hub_refuses_a_local_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The online branch with the hub's answers faked (no request is made): a gated model
    exists; a network error refuses a run on this machine (it could not fetch the model
    either), naming the error and the cache, and lets a Ray run through."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    def answer(error: type[Exception]) -> Any:
        def model_info(repo_id: str, timeout: float) -> None:
            assert timeout <= 5
            raise error.__new__(error)
        return model_info

    monkeypatch.setattr(huggingface_hub, "model_info", answer(RepositoryNotFoundError))
    assert preflight.online_problems("someone/nope")[0].startswith(
        "Model: 'someone/nope' is not on the Hugging Face hub")
    monkeypatch.setattr(huggingface_hub, "model_info", answer(GatedRepoError))
    assert preflight.online_problems("someone/nope") == []
    for error in (ConnectionError, TimeoutError):
        monkeypatch.setattr(huggingface_hub, "model_info", answer(error))
        monkeypatch.delenv("SPARSEBENCH_EXECUTOR", raising=False)
        (problem,) = preflight.online_problems("someone/nope")
        assert problem.startswith("Model: 'someone/nope' is not in the local Hugging Face cache (")
        assert f"the hub cannot be reached to fetch it ({error.__name__}" in problem
        monkeypatch.setenv("SPARSEBENCH_EXECUTOR", "ray")
        assert preflight.online_problems("someone/nope") == []


def test_a_folder_without_config_json_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    problems = refused(tmp_path, PruneSpec, prune_values(assets, model=assets["no-config"]),
                       f"Model: the folder {assets['no-config']!r} has no config.json; give a "
                       "folder saved by transformers (save_pretrained)")
    assert len(problems) == 1


def test_a_file_given_as_the_model_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    refused(tmp_path, PruneSpec, prune_values(assets, model=assets["gguf"]),
            f"Model: {assets['gguf']!r} is a file, not a folder")


# -- the architecture is supported ------------------------------------------------------------
def test_a_t5_folder_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    problems = refused(tmp_path, PruneSpec, prune_values(assets, model=assets["t5"]),
                       f"Model: model type 't5' is not supported (encoder-decoder); {SUPPORTED}")
    assert len(problems) == 1
    dense = prune_values(assets, model=assets["t5"], method="dense", sparsity="0", samples=0,
                         seqlen=0, calibration="")
    assert any("'t5' is not supported" in p for p in check(PruneSpec, dense)[1])


def test_a_bert_folder_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    refused(tmp_path, PruneSpec, prune_values(assets, model=assets["bert"]),
            f"Model: model type 'bert' is not supported (encoder only); {SUPPORTED}")


def test_coreinfer_on_a_gpt2_folder_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    values = {"model": assets["gpt2"], "ppl_datasets": [assets["corpus"]], "ppl_seqlen": 32}
    problems = refused(tmp_path, ActivationSpec, values,
                       "Model: CoreInfer supports the Llama family and OPT, not 'gpt2'")
    assert len(problems) == 1
    assert check(PruneSpec, prune_values(assets, model=assets["gpt2"]))[1] == []  # Wanda: fine


# -- windows fit the model -----------------------------------------------------------------------
def test_tokens_per_sample_above_the_positions_are_refused(tmp_path: Path,
                                                           assets: dict[str, str]) -> None:
    values = prune_values(assets, seqlen=512, ppl_seqlen=300)
    problems = refused(tmp_path, PruneSpec, values,
                       "Tokens per sample: 512 tokens exceed the model's 256 positions "
                       "(max_position_embeddings); use at most 256.")
    assert ("Window length (tokens): 300 tokens exceed the model's 256 positions "
            "(max_position_embeddings); use at most 256.") in problems
    gpt2 = check(PruneSpec, prune_values(assets, model=assets["gpt2"], seqlen=128))[1]
    assert gpt2 == ["Tokens per sample: 128 tokens exceed the model's 64 positions "
                    "(n_positions); use at most 64."]
    magnitude = prune_values(assets, method="magnitude", seqlen=512)  # no calibration: fine
    assert check(PruneSpec, magnitude)[1] == []


# -- text files -------------------------------------------------------------------------------
def test_a_png_as_calibration_text_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    refused(tmp_path, PruneSpec, prune_values(assets, calibration=assets["png"]),
            f"Calibration source: the file {assets['png']!r} is not UTF-8 text (it looks like a "
            "PNG image); give a UTF-8 .txt file.")


def test_a_gguf_as_calibration_text_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    refused(tmp_path, PruneSpec, prune_values(assets, calibration=assets["gguf"]),
            f"Calibration source: the file {assets['gguf']!r} is not UTF-8 text (it looks like a "
            "GGUF model file)")


def test_an_empty_text_file_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    problems = refused(tmp_path, PruneSpec,
                       prune_values(assets, calibration=assets["empty"],
                                    ppl_datasets=[assets["empty"]]),
                       f"Calibration source: the file {assets['empty']!r} is empty")
    assert f"Evaluation dataset: the file {assets['empty']!r} is empty; give a UTF-8 .txt file " \
           "with text in it." in problems


def test_text_too_short_for_the_windows_is_refused(tmp_path: Path,
                                                   assets: dict[str, str]) -> None:
    short = tmp_path / "short.txt"
    short.write_text("too short to fill one window")  # 28 bytes: at most 28 tokens
    problems = refused(tmp_path, PruneSpec,
                       prune_values(assets, calibration=str(short), ppl_datasets=[str(short)]),
                       f"Calibration source: the file {str(short)!r} holds 28 bytes, so at most "
                       "about 28 tokens (a token is at least one byte): one calibration sample "
                       "of 32 tokens needs 33")
    assert any(p.startswith("Evaluation dataset:") and "fewer than one window of 32 tokens" in p
               for p in problems)


def test_binary_detection_reads_nul_bytes_and_invalid_utf8() -> None:
    assert preflight.binary_reason("Grüße, plain text\n".encode(), complete=True) is None
    assert preflight.binary_reason(b"text\x00more", complete=True) == "a NUL byte at byte 4"
    assert preflight.binary_reason(b"ab\xff", complete=True) == "invalid UTF-8 at byte 2"
    cut = "é".encode()[:1]  # a character cut at the 64 KiB boundary is not an error
    assert preflight.binary_reason(b"x" + cut, complete=False) is None


# -- search ranges ------------------------------------------------------------------------------
def test_a_search_goal_of_one_is_refused() -> None:
    pytest.importorskip("lm_eval")
    problems = check(SearchSpec, {"goal": 1.0})[1]
    assert problems == ["Goal (mean kept fraction): 1.0 is not a number above 0 and below 1."]
    assert check(SearchSpec, {"goal": 0.999})[1] == []
    # a factor of CoreInfer's measured kept fraction may be 1.0: the same actual sparsity
    assert check(SearchSpec, {"goal": None, "goal_factor": 1.0})[1] == []
    factor = check(SearchSpec, {"goal": None, "goal_factor": 1.5})[1]
    assert factor[0] == ("Factor of CoreInfer's kept fraction: 1.5 is not a number above 0 "
                         "and at most 1.")


# -- memory ------------------------------------------------------------------------------------
def smollm2_shape() -> plan.Shape:
    cfg, problems = preflight.load_config("smollm2-135m")  # known: nothing is loaded
    assert problems == []
    return plan.shape_of(cfg, "llama")


def test_the_plan_counts_the_weights_from_the_config() -> None:
    shape = smollm2_shape()
    # embeddings (tied) + 30 x (attention q, o 576 x 576, k, v 576 x 192 + SwiGLU 3 x 576 x 1536)
    block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert plan.block_parameters(shape) == block
    assert plan.parameter_count(shape) == 49152 * 576 + 30 * block == 134_479_872
    work = plan.Work(dtype="float32", method="sparsegpt", samples=128, seqlen=2048)
    pruning = plan.build(shape, work).phase("pruning a block")
    assert pruning is not None and not pruning.device  # a CPU run: all of it is host memory
    assert pruning.host["block"] == block * 4
    assert pruning.host["calibration activations"] == 128 * 2048 * 576 * 4  # one copy
    assert pruning.host["Hessians"] == 4 * (6 * 576**2 + 1536**2)  # a Hessian per linear
    wanda = plan.build(shape, plan.Work(dtype="bfloat16", method="wanda", samples=1, seqlen=8,
                                        compute_dtype="bfloat16")).phase("pruning a block")
    assert wanda is not None and wanda.host["block"] == block * 2
    assert wanda.host["input norms"] == 4 * (6 * 576 + 1536)


def test_a_run_far_above_the_machines_memory_is_refused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "budgets", lambda device, at_start=False: (
        None, int(20.1 * plan.GIB)))
    values = dict(model="smollm2-135m", method="wanda", sparsity="0.5",
                  calibration="wiki-offline", samples=4096, seqlen=8192)
    refused(tmp_path, PruneSpec, values,
            "Memory: this run needs about 72.7 GiB of RAM at its peak (pruning a block: "
            "calibration activations 72.0 GiB + runtime 0.4 GiB + forward 0.2 GiB) but the "
            "host's RAM has 20.1 GiB in all; use fewer Samples or fewer Tokens per sample.")
    monkeypatch.setattr(preflight, "budgets", lambda device, at_start=False: (None, None))
    assert check(PruneSpec, values)[1] == []  # nothing known about the machine: no problem


# -- a good run passes --------------------------------------------------------------------------
def test_a_tiny_llama_with_a_local_text_passes_and_is_queued(tmp_path: Path,
                                                             assets: dict[str, str]) -> None:
    spec, problems = check(PruneSpec, prune_values(assets))
    assert problems == [] and spec is not None
    store = Store(tmp_path / "r.duckdb").init()
    submission = jobs.submit(store, spec)
    assert submission.baseline_id is not None and len(store.runs()) == 2  # run + dense baseline
    activation = {"model": assets["llama"], "ppl_datasets": [assets["corpus"]], "ppl_seqlen": 64}
    assert check(ActivationSpec, activation)[1] == []


def test_a_folder_without_weight_files_is_refused(tmp_path: Path, assets: dict[str, str]) -> None:
    folder = tmp_path / "config-only"
    LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4).save_pretrained(folder)
    refused(tmp_path, PruneSpec, prune_values(assets, model=str(folder)),
            f"Model: the folder {str(folder)!r} has a config.json but no weight files "
            "(*.safetensors or *.bin)")
