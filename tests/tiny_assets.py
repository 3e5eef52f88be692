"""Tiny offline assets for tests: a BPE tokenizer trained in code and a random Llama folder."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SAMPLE_TEXT = " ".join(
    f"The {w} of sentence {i} is a plain example about pruning models and measuring perplexity."
    for i, w in enumerate(["start", "middle", "end", "heart", "tone", "length"] * 40)
)


def tiny_tokenizer(vocab_size: int = 200) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_llama_folder(folder: Path, seed: int = 0, fit_steps: int = 0) -> Path:
    """Save a 2-block random Llama with the tiny tokenizer, as a hub model would look on disk.

    A random model's perplexity is about its vocabulary size, which runs store as 'collapsed'
    (no better than uniform guessing); ``fit_steps`` AdamW steps on ``SAMPLE_TEXT`` make it
    clearly better (10 steps: perplexity about 17 against 259 tokens)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    if fit_steps:
        _fit(model, tokenizer, fit_steps)
    model.eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _fit(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int) -> None:
    """A few full-batch AdamW steps on 16 windows of 64 tokens of ``SAMPLE_TEXT``."""
    ids = torch.tensor(tokenizer(SAMPLE_TEXT)["input_ids"][:16 * 64]).view(16, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def model_and_text(root: Path) -> dict[str, str]:
    """A saved tiny Llama folder and a text file of ``SAMPLE_TEXT`` under ``root``, by role:
    ``model`` and ``text``."""
    text = root / "sample.txt"
    text.write_text(SAMPLE_TEXT)
    return {"model": str(tiny_llama_folder(root / "tiny-model")), "text": str(text)}
