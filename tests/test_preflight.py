"""Preflight: a run that cannot work is refused before anything is queued, worded with the field
and what is allowed -- by ``check`` (the forms, the command line) and by ``jobs.submit`` (which
then stores nothing).  Only config.json files and the first bytes of text files are read; the hub
is offline here and never asked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from transformers import BertConfig, GPT2Config, T5Config

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
    GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=4, n_positions=64).save_pretrained(
        root / "gpt2")
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


def test_online_the_hub_is_asked_once_and_network_errors_are_no_problem(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The online branch with the hub's answers faked (no request is made)."""
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
    for error in (GatedRepoError, ConnectionError, TimeoutError):
        monkeypatch.setattr(huggingface_hub, "model_info", answer(error))
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
                       "Calibration seqlen: 512 tokens exceed the model's 256 positions "
                       "(max_position_embeddings); use at most 256.")
    assert ("Perplexity seqlen: 300 tokens exceed the model's 256 positions "
            "(max_position_embeddings); use at most 256.") in problems
    gpt2 = check(PruneSpec, prune_values(assets, model=assets["gpt2"], seqlen=128))[1]
    assert gpt2 == ["Calibration seqlen: 128 tokens exceed the model's 64 positions "
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
    assert problems == ["Goal: 1.0 is not a number above 0 and below 1."]
    assert check(SearchSpec, {"goal": 0.999})[1] == []
    # a factor of CoreInfer's measured kept fraction may be 1.0: the same actual sparsity
    assert check(SearchSpec, {"goal": None, "goal_factor": 1.0})[1] == []
    factor = check(SearchSpec, {"goal": None, "goal_factor": 1.5})[1]
    assert factor[0] == "Goal factor: 1.5 is not a number above 0 and at most 1."


# -- memory ------------------------------------------------------------------------------------
def smollm2_shape() -> preflight.Shape:
    cfg, problems = preflight.load_config("smollm2-135m")  # known: nothing is loaded
    assert problems == []
    return preflight.shape_of(cfg)


def test_the_memory_estimate_adds_model_block_inputs_and_method_state() -> None:
    shape = smollm2_shape()
    # embeddings (tied) + 30 x (attention q, o 576 x 576, k, v 576 x 192 + SwiGLU 3 x 576 x 1536)
    assert preflight.parameter_count(shape) == 49152 * 576 + 30 * (
        2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) == 134_479_872
    estimate = preflight.estimate_memory(shape, "float32",
                                         preflight.Calibration("sparsegpt", 128, 2048))
    assert estimate.model == 134_479_872 * 4
    assert estimate.block_inputs == 128 * 2048 * 576 * 4 * 2  # inputs and outputs of a block
    assert estimate.method_state == 4 * (6 * 576**2 + 1536**2)  # a Hessian per linear
    assert estimate.total == estimate.model + estimate.block_inputs + estimate.method_state
    wanda = preflight.estimate_memory(shape, "bfloat16", preflight.Calibration("wanda", 1, 8))
    assert wanda.model == 134_479_872 * 2 and wanda.method_state == 4 * (6 * 576 + 1536)
    sparsellm = preflight.estimate_memory(shape, "float32", preflight.Calibration("sparsellm",
                                                                                  2, 8))
    assert sparsellm.method_state == estimate.method_state + 4 * 16 * (2 * 576 + 1536)
    assert preflight.estimate_memory(shape, "float32").total == 134_479_872 * 4


def test_a_run_far_above_free_memory_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    free = int(20.1 * preflight.GIB)
    monkeypatch.setattr(preflight, "free_memory", lambda device: free)
    values = dict(model="smollm2-135m", method="wanda", sparsity="0.5",
                  calibration="wiki-offline", samples=4096, seqlen=8192)
    expected = preflight.estimate_memory(smollm2_shape(), "float32",
                                         preflight.Calibration("wanda", 4096, 8192))
    assert round(expected.total / preflight.GIB, 1) == 144.5
    refused(tmp_path, PruneSpec, values,
            "Memory: this run needs about 144.5 GiB (model 0.5 GiB + block inputs 144.0 GiB + "
            "method state 0.0 GiB) but cpu has 20.1 GiB free; use fewer samples or a shorter "
            "seqlen.")
    monkeypatch.setattr(preflight, "free_memory", lambda device: None)  # cannot tell: no problem
    assert check(PruneSpec, values)[1] == []


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
