"""Text sources: the offline Wikipedia split, calibration windows, local copies of hub data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from core.engine import data
from tests.tiny_assets import tiny_tokenizer


def test_wiki_offline_parts_never_overlap() -> None:
    calibration = data.load_text("wiki-offline", "calibration")
    evaluation = data.load_text("wiki-offline", "evaluation")
    titles = [set(line for line in text.splitlines() if line.startswith(" = "))
              for text in (calibration, evaluation)]
    assert titles[0] and titles[1] and not titles[0] & titles[1]
    assert len(calibration) > 5 * len(evaluation) > 100_000
    # No long passage of the evaluation text appears in the calibration text.
    paragraphs = [p for p in evaluation.splitlines() if len(p) > 200]
    assert paragraphs and not any(p in calibration for p in paragraphs[:50])


def test_calibration_windows_are_seeded(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text((data.load_text("wiki-offline", "calibration"))[:20000])
    tok = tiny_tokenizer()
    first = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=0)
    again = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=0)
    other = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=1)
    assert first.shape == (4, 32)
    assert (first == again).all() and not (first == other).all()


def test_unknown_source_and_bad_split_are_explained() -> None:
    with pytest.raises(data.DataError, match="wiki-offline"):
        data.load_text("no-such-corpus", "evaluation")
    with pytest.raises(data.DataError, match="split"):
        data.load_text("wiki-offline", "train")


def test_hub_datasets_read_from_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    """The hub code path (datasets.load_dataset) on a local folder, never the network."""
    folder = tmp_path / "wikitext2"
    folder.mkdir()
    pd.DataFrame({"text": ["train line one", "train line two"]}).to_parquet(
        folder / "train-00000-of-00001.parquet")
    pd.DataFrame({"text": [" = Heading = ", "first test line", "second test line"]}).to_parquet(
        folder / "test-00000-of-00001.parquet")
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    pd.DataFrame({"sentence": ["a b", "c d"]}).to_parquet(ptb / "test-00000-of-00001.parquet")
    pd.DataFrame({"sentence": ["e f"]}).to_parquet(ptb / "train-00000-of-00001.parquet")
    monkeypatch.setenv("SPARSEBENCH_DATASETS_DIR", str(tmp_path))
    assert data.load_text("wikitext2", "evaluation") == (
        " = Heading = \n\nfirst test line\n\nsecond test line")
    assert data.load_text("wikitext2", "calibration") == "train line one train line two"
    assert data.load_text("ptb", "evaluation") == "a b c d"
    with pytest.raises(data.DataError, match="no folder"):
        data.load_text("c4", "evaluation")


# -- the reference code's data protocol, re-implemented here from its description ----------------
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with a BOS added by default, as Llama's tokenizer does."""
    tok = tiny_tokenizer()
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("a b")["input_ids"][0] == bos
    return tok


WORDS = ["the", "model", "of", "a", "small", "corpus", "reads", "every", "line", "and",
         "twice"]


def _documents(count: int, rng: random.Random, longest: int = 40) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest)))
            for _ in range(count)]


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch) -> dict[str, dict[str, list[str]]]:
    """Small local copies of wikitext2, ptb and c4 (SPARSEBENCH_DATASETS_DIR)."""
    rng = random.Random(7)
    texts = {"wikitext2": {"train": _documents(60, rng), "test": _documents(30, rng)},
             "ptb": {"train": _documents(60, rng), "test": _documents(30, rng)},
             "c4": {"train": _documents(80, rng, 60), "validation": _documents(1150, rng, 4)}}
    field = {"wikitext2": "text", "ptb": "sentence", "c4": "text"}
    for name, splits in texts.items():
        (tmp_path / name).mkdir()
        for split, docs in splits.items():
            pd.DataFrame({field[name]: docs}).to_json(
                tmp_path / name / f"{split}.json", orient="records", lines=True)
    monkeypatch.setenv("SPARSEBENCH_DATASETS_DIR", str(tmp_path))
    return texts


def reference_joined_windows(tok, text: str, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """get_wikitext2 / get_ptb: tokenize the joined text once, random windows from one seed."""
    enc = tok(text, return_tensors="pt").input_ids
    random.seed(seed)
    rows = []
    for _ in range(n):
        i = random.randint(0, enc.shape[1] - seqlen - 1)
        rows.append(enc[:, i:i + seqlen])
    return torch.cat(rows)


def reference_c4_windows(tok, docs: list[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    """get_c4: a random document until one is longer than seqlen, then a random window."""
    random.seed(seed)
    rows = []
    for _ in range(n):
        while True:
            enc = tok(docs[random.randint(0, len(docs) - 1)], return_tensors="pt").input_ids
            if enc.shape[1] > seqlen:
                break
        i = random.randint(0, enc.shape[1] - seqlen - 1)
        rows.append(enc[:, i:i + seqlen])
    return torch.cat(rows)


@pytest.mark.parametrize("name", ["wikitext2", "ptb"])
def test_joined_corpora_follow_the_reference_protocol(local_hub, name) -> None:
    tok, texts = bos_tokenizer(), local_hub[name]
    calibration_joiner, evaluation_joiner = " ", "\n\n" if name == "wikitext2" else " "
    got = data.calibration_ids(tok, name, n_samples=6, seqlen=16, seed=3)
    want = reference_joined_windows(tok, calibration_joiner.join(texts["train"]), 6, 16, 3)
    assert torch.equal(got, want)
    evaluation = data.evaluation_ids(tok, name, seqlen=16)
    expected = tok(evaluation_joiner.join(texts["test"]), return_tensors="pt").input_ids[0]
    assert torch.equal(evaluation, expected)
    assert evaluation[0] == tok.bos_token_id  # the tokenizer's default special tokens


def test_c4_follows_the_reference_protocol(local_hub) -> None:
    tok, texts = bos_tokenizer(), local_hub["c4"]
    got = data.calibration_ids(tok, "c4", n_samples=5, seqlen=24, seed=0)
    assert torch.equal(got, reference_c4_windows(tok, texts["train"], 5, 24, 0))
    evaluation = data.evaluation_ids(tok, "c4", seqlen=8)
    joined = tok(" ".join(texts["validation"][:1100]), return_tensors="pt").input_ids
    assert joined.shape[1] > 256 * 8, "the setup is too short to show the cut"
    assert torch.equal(evaluation, joined[0, : 256 * 8])


def test_tokenizing_hands_the_freed_heap_back(monkeypatch, tmp_path: Path) -> None:
    """After the whole-text tokenizer call the C heap's freed pages go back to the OS (glibc's
    malloc_trim), and the ids are the tokenizer's own; one document (C4's per-document calls)
    is tokenized without it."""
    from core.engine import environment

    calls = []
    monkeypatch.setattr(environment, "release_freed_memory", lambda: calls.append(1) or True)
    tokenizer = tiny_tokenizer()
    text = "the cat sat on the mat " * 50
    assert data.tokenize(tokenizer, text).tolist() == tokenizer(text)["input_ids"]
    assert calls == []
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    assert data.evaluation_ids(tokenizer, str(corpus)).tolist() == tokenizer(text)["input_ids"]
    assert calls == [1]
    monkeypatch.undo()
    assert environment.release_freed_memory() is True  # glibc Linux: malloc_trim is there


def test_cache_entries_built_at_once_by_two_processes_are_whole(tmp_path) -> None:
    """Two workers sharing a cache may build the same entry together: each writes its own
    partial copy and the first one placed is kept whole."""
    from core import config

    target = tmp_path / "entry"
    mine, theirs = config.private_partial(target), target.with_name(".entry.other.partial")
    assert str(os.getpid()) in mine.name
    for partial, text in ((theirs, "theirs"), (mine, "mine")):
        partial.mkdir()
        (partial / "config.json").write_text(text)
    config.publish(theirs, target)
    config.publish(mine, target)  # placed second: theirs stays, ours is dropped
    assert (target / "config.json").read_text() == "theirs" and not mine.exists()
    single = tmp_path / "names.json"
    partial = config.private_partial(single)
    partial.write_text("[1]")
    config.publish(partial, single)
    assert single.read_text() == "[1]" and not partial.exists()
