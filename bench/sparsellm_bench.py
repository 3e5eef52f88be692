"""Benchmark: SparseLLM vs SparseGPT pruning wall time on SmolLM2-135M (the seed reports 2.2-2.3x).

    python bench/sparsellm_bench.py [--samples 32] [--seqlen 256] [--sparsity 0.5] [--device cpu]
                                    [--threads N] [--only 'first half']

Four runs on a freshly loaded model each: SparseGPT and SparseLLM (architecture defaults: Llama
family, alpha = beta = gamma = 5, 4 iterations) on the paper's block range (the first half of the
decoder blocks) and on all blocks.  Besides the time, the table gives the summed FFN
reconstruction error on the calibration data, ||FFN_pruned(X) - FFN_dense(X)||^2 over the pruned
blocks, for SparseLLM's first iteration (which is SparseGPT on the same inputs) and its last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(method_name: str, block_range: tuple[int, int], args: argparse.Namespace,
         calibration) -> dict:
    import torch

    from core.engine import models
    from core.engine.prune.methods import Target, get_method
    from core.engine.prune.runner import prune_model

    model, _ = models.load_model("smollm2-135m")
    method = get_method(method_name)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    report = prune_model(model, method, Target.parse(args.sparsity), calibration,
                         device=args.device, block_range=block_range)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    errors = [note["ffn_errors"] for note in report.notes.values() if "ffn_errors" in note]
    first = sum(e[0] for e in errors) if errors else float("nan")
    last = sum(e[-1] for e in errors) if errors else float("nan")
    return {"seconds": seconds, "sparsity": report.overall, "first": first, "last": last,
            "improved": sum(e[-1] < e[0] for e in errors), "blocks": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 gives stable timings on "
                             "a busy machine")
    parser.add_argument("--only", choices=["first half", "all blocks"],
                        help="measure one block range only (default: both)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from core.engine import data, models

    model, tok = models.load_model("smollm2-135m")
    n_blocks = model.config.num_hidden_layers
    del model
    calibration = data.calibration_ids(tok, "wiki-offline", args.samples, args.seqlen, seed=0)
    print(f"SmolLM2-135M ({n_blocks} blocks), {args.samples} calibration samples x {args.seqlen} "
          f"tokens of wiki-offline, sparsity {args.sparsity}, device {args.device}, "
          f"{torch.get_num_threads()} CPU threads")
    ranges = {"first half": (0, n_blocks // 2), "all blocks": (0, n_blocks)}
    if args.only:
        ranges = {args.only: ranges[args.only]}
    header = (f"{'blocks':<22}{'sparsegpt s':>12}{'sparsellm s':>12}{'ratio':>7}"
              f"{'FFN err it1':>13}{'FFN err last':>13}{'better':>8}")
    rows = []
    for label, block_range in ranges.items():
        gpt = _run("sparsegpt", block_range, args, calibration)
        llm = _run("sparsellm", block_range, args, calibration)
        rows.append(
            f"{label + f' ({block_range[0]}..{block_range[1] - 1})':<22}{gpt['seconds']:>12.1f}"
            f"{llm['seconds']:>12.1f}{llm['seconds'] / gpt['seconds']:>6.2f}x"
            f"{llm['first']:>13.2f}{llm['last']:>13.2f}"
            f"{str(llm['improved']) + '/' + str(llm['blocks']):>8}")
    print()
    print(header)
    for row in rows:
        print(row)
    print("\nFFN err: summed ||FFN_pruned(X) - FFN_dense(X)||^2 on the calibration tokens; it1 = "
          "SparseLLM's first iteration = SparseGPT on the same block inputs; 'better' = blocks "
          "whose final error is below it1.")


if __name__ == "__main__":
    main()
