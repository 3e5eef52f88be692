"""Benchmark: 2:4 semi-structured sparse matmul speed-up of pruned SmolLM2-135M linears (CUDA).

    python bench/sparse24_bench.py [--tokens 1 16 256 4096] [--repeats 50] [--dtype float16]

Every linear of block 0 is pruned 2:4 (magnitude, the reference rule) and converted with
``torch.sparse.to_sparse_semi_structured``; the table gives the median time of ``F.linear`` on
random inputs of each token count, dense against sparse, their ratio and the largest difference
of the outputs.  Needs a CUDA GPU with 2:4 sparse tensor cores (compute capability 8.0 or newer):
without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _median_ms(x: torch.Tensor, weight: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of ``F.linear(x, weight)`` on the GPU."""
    F.linear(x, weight)  # warm-up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        F.linear(x, weight)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _pruned_24(weight: torch.Tensor) -> torch.Tensor:
    from core.engine.masks import nm_mask

    mask = nm_mask(weight.abs().float(), 2, 4, "reference")
    return weight.masked_fill(mask, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        print("sparse24_bench: no CUDA GPU with 2:4 sparse tensor cores; nothing measured")
        return
    from torch.sparse import to_sparse_semi_structured

    from core.engine import models
    from core.engine.adapters import get_adapter, weight_matrix

    dtype = models.DTYPES[args.dtype]
    model, _ = models.load_model("smollm2-135m")
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, block 0 of SmolLM2-135M, 2:4 magnitude")
    print(f"{'linear':<18}{'shape':>12}{'tokens':>8}{'dense ms':>10}{'2:4 ms':>9}"
          f"{'speed-up':>10}{'max |diff|':>12}")
    for name, module in adapter.linears(block).items():
        weight = _pruned_24(weight_matrix(module).detach().to("cuda", dtype))
        sparse = to_sparse_semi_structured(weight)
        for tokens in args.tokens:
            x = torch.randn(tokens, weight.shape[1], device="cuda", dtype=dtype)
            dense_ms = _median_ms(x, weight, args.repeats)
            sparse_ms = _median_ms(x, sparse, args.repeats)
            diff = float((F.linear(x, weight) - F.linear(x, sparse)).abs().max())
            print(f"{name:<18}{str(tuple(weight.shape)):>12}{tokens:>8}{dense_ms:>10.4f}"
                  f"{sparse_ms:>9.4f}{dense_ms / sparse_ms:>9.2f}x{diff:>12.2e}")


if __name__ == "__main__":
    main()
