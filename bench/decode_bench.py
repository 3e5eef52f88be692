"""Benchmark: CoreInfer decode speed on the real SmolLM2-135M, dense vs kept fractions.

    python bench/decode_bench.py [--prompt 64] [--new 64] [--repeats 3] [--device cpu]

A prompt of ``--prompt`` tokens from the offline Wikipedia evaluation text; greedy generation of
``--new`` tokens through ``model.generate`` (KV cache).  Decode time = time(generate ``new``
tokens) - time(generate 1 token), i.e. without the pre-fill; medians over ``--repeats``.
The FFN share of decode time is measured with hooks on every block's MLP in a separate pass (on
CUDA the hooks synchronise, so that pass is not used for tokens/s).  "Amdahl" is the speed-up the
measured kept fraction would give if only the FFN got cheaper, in proportion:
``1 / (1 - f + f * kept)`` with ``f`` the dense FFN share.  "Same prefix" counts the generated
tokens equal to the dense generation before the first difference (the first token always comes
from the dense pre-fill).  A second table gives the pre-fill forward alone, dense and CoreInfer
measured alternately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.engine import data, models  # noqa: E402
from core.engine.activation import FFNTimer, apply_coreinfer  # noqa: E402
from core.engine.adapters import get_adapter  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _generate(model, ids, new: int, pad: int, device: str) -> tuple[float, torch.Tensor]:
    _sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, use_cache=True,
                             pad_token_id=pad)
    _sync(device)
    return time.perf_counter() - started, out[0, ids.shape[1]:]


def measure(model, ids, new: int, repeats: int, pad: int, device: str) -> dict:
    _generate(model, ids, new, pad, device)  # warm-up
    full, first = [], []
    for _ in range(repeats):  # interleaved, so a busy machine slows both alike
        full.append(_generate(model, ids, new, pad, device)[0])
        first.append(_generate(model, ids, 1, pad, device)[0])
    decode_s = statistics.median(full) - statistics.median(first)
    blocks = get_adapter(model).blocks(model)
    with FFNTimer([b.mlp if hasattr(b, "mlp") else b for b in blocks]) as t_full:
        timed_full, tokens = _generate(model, ids, new, pad, device)
    with FFNTimer([b.mlp if hasattr(b, "mlp") else b for b in blocks]) as t_first:
        timed_first, _ = _generate(model, ids, 1, pad, device)
    return {
        "decode_tok_s": (new - 1) / decode_s,
        "prefill_ms": 1000 * statistics.median(first),
        "ffn_share": (t_full.seconds - t_first.seconds) / (timed_full - timed_first),
        "tokens": tokens,
    }


def _prefill_ms(model, ids, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    _sync(device)
    return 1000 * (time.perf_counter() - started)


def paired_prefill(model, ids, kept: float, token_sparsity: float, repeats: int,
                   device: str) -> tuple[float, float]:
    """Median pre-fill forward ms, dense and CoreInfer, measured alternately (so that a drift of
    the machine's speed falls on both alike)."""
    dense, sparse = [], []
    for _ in range(repeats + 1):  # the first pair warms up
        dense.append(_prefill_ms(model, ids, device))
        handle = apply_coreinfer(model, sparsity=kept, token_sparsity=token_sparsity)
        sparse.append(_prefill_ms(model, ids, device))
        handle.remove()
    return statistics.median(dense[1:]), statistics.median(sparse[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kept", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--token-sparsity", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(models.DTYPES))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on cpu: on a shared machine more "
                             "threads made single forwards vary from 0.1 s to 5 s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)

    model, tokenizer = models.load_model("smollm2-135m", dtype=args.dtype, device=args.device)
    ids = data.tokenize(tokenizer, data.load_text("wiki-offline", "evaluation"))[: args.prompt]
    ids = ids.unsqueeze(0).to(args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_blocks = len(get_adapter(model).blocks(model))
    print(f"SmolLM2-135M ({n_blocks} blocks, d_ffn {model.config.intermediate_size}), "
          f"{args.dtype} on {args.device}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; prompt {ids.shape[1]} "
          f"tokens, {args.new} new tokens greedy, median of {args.repeats}; token_sparsity "
          f"{args.token_sparsity}, all blocks converted")

    dense = measure(model, ids, args.new, args.repeats, pad, args.device)
    rows = [{"config": "dense", "kept": 1.0, **dense}]
    for kept in args.kept:
        handle = apply_coreinfer(model, sparsity=kept, token_sparsity=args.token_sparsity)
        result = measure(model, ids, args.new, args.repeats, pad, args.device)
        handle.reset_stats()
        _generate(model, ids, args.new, pad, args.device)
        stats = handle.stats()
        handle.remove()
        assert stats.decode_steps == args.new - 1, stats
        rows.append({"config": f"CoreInfer {kept}", "kept": stats.kept_fraction, **result})

    f = dense["ffn_share"]
    header = ("| config | measured kept | decode tok/s | speed-up | Amdahl bound | FFN share "
              "of decode | pre-fill ms | same prefix as dense |")
    print(header)
    print("|" + "---|" * 8)
    for row in rows:
        differ = (row["tokens"] != dense["tokens"]).nonzero()
        same = int(differ[0, 0]) if len(differ) else len(dense["tokens"])  # common prefix
        row["speedup"] = row["decode_tok_s"] / dense["decode_tok_s"]
        row["amdahl"] = 1 / (1 - f + f * row["kept"])
        row["same_tokens"] = same
        print(f"| {row['config']} | {row['kept']:.3f} | {row['decode_tok_s']:.1f} | "
              f"{row['speedup']:.2f}x | {row['amdahl']:.2f}x | {row['ffn_share']:.1%} | "
              f"{row['prefill_ms']:.0f} | {same}/{args.new} |")
    print(f"\npre-fill forward of the {ids.shape[1]}-token prompt, dense and CoreInfer measured "
          f"alternately, median of {5 * args.repeats}:")
    print("| config | dense ms | CoreInfer ms | slower by |")
    print("|---|---|---|---|")
    for kept in args.kept:
        dense_ms, sparse_ms = paired_prefill(model, ids, kept, args.token_sparsity,
                                             5 * args.repeats, args.device)
        print(f"| CoreInfer {kept} | {dense_ms:.1f} | {sparse_ms:.1f} | "
              f"{sparse_ms / dense_ms - 1:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "tokens"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
