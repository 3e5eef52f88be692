"""Text sources for calibration and perplexity: offline Wikipedia, hub datasets, local files.

Every source has two parts that never overlap: ``calibration`` (train) and ``evaluation`` (test).
Hub datasets follow the reference code's protocol (``PROTOCOL``): WikiText-2 raw (calibration
text joined with " ", test with "\n\n"), PTB text-only (both with " "), C4 en shards
(calibration: random documents longer than the window, then a random window, from one seeded
``random``; evaluation: the first 1100 validation documents joined with " ", cut to 256
windows).  Text is tokenized once per split with the tokenizer's default special tokens (a BOS
for Llama tokenizers), as ``tokenizer(text)`` in the reference code.  Setting
``SPARSEBENCH_DATASETS_DIR`` makes the same code read a local copy (``<dir>/<name>/`` holding
``train*`` / ``test*`` / ``validation*`` parquet or json files) instead of the hub.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import config
from core.engine import environment

if TYPE_CHECKING:  # torch and transformers load on first use: the dashboard's specs read this
    import torch  # module for its source names only
    from transformers import PreTrainedTokenizerBase

SPLITS = ("calibration", "evaluation")
WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_EVAL_EVERY = 10  # every 10th article is held out for evaluation


#: The version of the data protocol, stored in every run's spec.  2: the reference code's
#: tokenization, joiners and C4 windows.  1 (runs stored before it): no special tokens, one
#: joiner per dataset for both splits, C4 evaluation not cut to 256 windows.
PROTOCOL = 2
C4_EVAL_WINDOWS = 256


class DataError(ValueError):
    """A text source is unknown or cannot be read; the message says what is allowed."""


@dataclass(frozen=True)
class HubText:
    """A hub dataset as the pruning papers use it."""

    path: str
    name: str | None
    field: str
    joiners: dict[str, str]  # split -> what the split's texts are joined with
    splits: dict[str, str]
    data_files: dict[str, str] | None = None
    eval_documents: int | None = None  # C4: the papers join only the first 1100 documents


HUB_TEXTS = {
    "wikitext2": HubText("Salesforce/wikitext", "wikitext-2-raw-v1", "text",
                         {"calibration": " ", "evaluation": "\n\n"},
                         {"calibration": "train", "evaluation": "test"}),
    "ptb": HubText("ptb-text-only/ptb_text_only", "penn_treebank", "sentence",
                   {"calibration": " ", "evaluation": " "},
                   {"calibration": "train", "evaluation": "test"}),
    "c4": HubText("allenai/c4", None, "text", {"calibration": " ", "evaluation": " "},
                  {"calibration": "train", "evaluation": "validation"},
                  data_files={"train": "en/c4-train.00000-of-01024.json.gz",
                              "validation": "en/c4-validation.00000-of-00008.json.gz"},
                  eval_documents=1100),
}
OFFLINE_TEXTS = ("wiki-offline",)


def known_sources() -> list[str]:
    return [*OFFLINE_TEXTS, *HUB_TEXTS]


# -- offline Wikipedia -----------------------------------------------------------------------
def _wiki_articles() -> list[tuple[str, str]]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("wiki-offline needs the gensim package (pip install gensim==4.4.0).")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    articles = []
    with bz2.BZ2File(path) as handle:
        for title, text, _ in extract_pages(handle):
            body = _clean_wiki(filter_wiki(text))
            if body and not body.upper().startswith("#REDIRECT"):
                articles.append((title, body))
    return articles


def _clean_wiki(text: str) -> str:
    """Drop bold/italic quote markup and the empty lines that stripped tables leave behind."""
    text = text.replace("'''", "").replace("''", "")
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def wiki_offline(split: str) -> str:
    """107 real Wikipedia articles from gensim's wheel; every 10th one is the evaluation part."""
    cache = config.cache_dir() / "texts" / f"wiki-offline-v2.{split}.txt"
    if cache.exists():
        return cache.read_text(encoding="utf-8")
    articles = _wiki_articles()
    held_out = split == "evaluation"
    parts = [f" = {title} = \n\n{body}" for i, (title, body) in enumerate(articles)
             if (i % WIKI_EVAL_EVERY == WIKI_EVAL_EVERY - 1) == held_out]
    text = "\n\n".join(parts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.private_partial(cache)
    tmp.write_text(text, encoding="utf-8")
    config.publish(tmp, cache)
    return text


# -- hub datasets (or their local copies) ------------------------------------------------------
def hub_text(name: str, split: str) -> str:
    """The joined text of a hub dataset split, following the papers' protocol."""
    from datasets import load_dataset

    src = HUB_TEXTS[name]
    hf_split = src.splits[split]
    local_root = os.environ.get("SPARSEBENCH_DATASETS_DIR")
    if local_root:
        folder = Path(local_root) / name
        if not folder.is_dir():
            raise DataError(f"SPARSEBENCH_DATASETS_DIR is set but has no folder {folder}.")
        dataset = load_dataset(str(folder), split=hf_split)
    elif src.data_files:
        dataset = load_dataset(src.path, data_files={hf_split: src.data_files[hf_split]},
                               split=hf_split)
    else:
        dataset = load_dataset(src.path, src.name, split=hf_split)
    texts = dataset[src.field]
    if split == "evaluation" and src.eval_documents:
        texts = texts[: src.eval_documents]
    return src.joiners[split].join(texts)


# -- public API -------------------------------------------------------------------------------
def load_text(source: str, split: str) -> str:
    """The text of ``source`` (a known name or a path to a .txt file) for one split."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, not {split!r}")
    if source in OFFLINE_TEXTS:
        return wiki_offline(split)
    if source in HUB_TEXTS:
        return hub_text(source, split)
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise DataError(f"The text file {path} is empty.")
        return text
    raise DataError(
        f"Unknown text source {source!r}: use one of {', '.join(known_sources())} "
        "or the path of a UTF-8 .txt file."
    )


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """Token ids of the whole text as a 1-D LongTensor, with the tokenizer's default special
    tokens (``tokenizer(text)``, as the reference code)."""
    import torch

    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


#: A text file is read and tokenized this many characters at a time (cut at a line end).
FILE_CHUNK_CHARS = 1 << 20
#: Calibration windows from a text file are drawn from its first tokens: this many, or 8 x the
#: tokens asked for when that is more (a file smaller than that is read whole).
FILE_CALIBRATION_TOKENS = 1 << 20


def file_ids(tokenizer: PreTrainedTokenizerBase, path: Path,
             max_tokens: int | None = None) -> torch.Tensor:
    """A text file's token ids (1-D), read and tokenized ``FILE_CHUNK_CHARS`` at a time (the
    tokenizer's special tokens once, at the start), stopping once ``max_tokens`` are there: the
    memory is that of the ids asked for, whatever the file's size.  A file of one chunk gives
    exactly ``tokenize`` of its whole text."""
    import torch

    parts: list[torch.Tensor] = []
    count = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        text = handle.read(FILE_CHUNK_CHARS)
        while text and (max_tokens is None or count < max_tokens):
            following = handle.read(FILE_CHUNK_CHARS)
            cut = (text.rfind("\n") + 1 or len(text)) if following else len(text)
            ids = tokenizer(text[:cut], add_special_tokens=not parts,
                            return_attention_mask=False)["input_ids"]
            parts.append(torch.tensor(ids, dtype=torch.long))
            count += len(ids)
            environment.release_freed_memory()
            text = text[cut:] + following
    if not parts or count == 0:
        raise DataError(f"The text file {path} is empty.")
    return torch.cat(parts)


def split_ids(tokenizer: PreTrainedTokenizerBase, source: str, split: str,
              max_tokens: int | None = None) -> torch.Tensor:
    """A split of ``source`` tokenized: a known source's whole split at once, as the reference
    code does; a text file chunk by chunk up to ``max_tokens`` (``file_ids``).  Then the C
    heap's freed pages go back to the OS (``environment.release_freed_memory``: the Rust
    tokenizer's scratch for a whole text would otherwise stay resident for the whole run)."""
    path = Path(source).expanduser()
    if source not in known_sources() and path.is_file():
        return file_ids(tokenizer, path, max_tokens)
    ids = tokenize(tokenizer, load_text(source, split))
    environment.release_freed_memory()
    return ids


def evaluation_ids(tokenizer: PreTrainedTokenizerBase, source: str,
                   seqlen: int | None = None, max_windows: int | None = None) -> torch.Tensor:
    """The evaluation split tokenized once (1-D); C4's is cut to 256 windows of ``seqlen``; a
    text file is read only as far as ``max_windows`` windows need."""
    limit = max_windows * seqlen if max_windows and seqlen else None
    ids = split_ids(tokenizer, source, "evaluation", limit)
    if source == "c4" and seqlen:
        ids = ids[: C4_EVAL_WINDOWS * seqlen]
    return ids


def calibration_ids(
    tokenizer: PreTrainedTokenizerBase, source: str, n_samples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """``n_samples`` random windows of ``seqlen`` tokens, shape ``[n_samples, seqlen]``.

    As in the papers: random documents longer than ``seqlen`` (C4), each contributing one random
    window; for joined corpora, random windows of the tokenized text (of a text file: of its
    first ``FILE_CALIBRATION_TOKENS`` tokens, or 8 x the tokens asked for when more).
    """
    if n_samples < 1 or seqlen < 2:
        raise DataError("calibration needs at least 1 sample of at least 2 tokens")
    rng = random.Random(seed)
    if source == "c4":
        return _c4_windows(tokenizer, n_samples, seqlen, rng)
    ids = split_ids(tokenizer, source, "calibration",
                    max(FILE_CALIBRATION_TOKENS, 8 * n_samples * seqlen))
    if ids.numel() <= seqlen:
        raise DataError(f"{source} has only {ids.numel()} calibration tokens; seqlen {seqlen} "
                        "needs more.")
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(n_samples)]
    return _stack([ids[s: s + seqlen] for s in starts])


def _c4_windows(tokenizer: PreTrainedTokenizerBase, n: int, seqlen: int,
                rng: random.Random) -> torch.Tensor:
    from datasets import load_dataset

    src = HUB_TEXTS["c4"]
    local_root = os.environ.get("SPARSEBENCH_DATASETS_DIR")
    if local_root:
        docs = load_dataset(str(Path(local_root) / "c4"), split="train")
    else:
        docs = load_dataset(src.path, data_files={"train": src.data_files["train"]}, split="train")
    windows = []
    for _ in range(100 * n):
        if len(windows) == n:
            break
        ids = tokenize(tokenizer, docs[rng.randint(0, len(docs) - 1)][src.field])
        if ids.numel() > seqlen:
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows.append(ids[start: start + seqlen])
    if len(windows) < n:
        raise DataError(f"C4 gave only {len(windows)} documents longer than {seqlen} tokens.")
    return _stack(windows)


def _stack(windows: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(windows)
