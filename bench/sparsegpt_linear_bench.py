"""Benchmark: SparseGPT's per-linear step against the reference code's, at SmolLM2's widths.

    python bench/sparsegpt_linear_bench.py [--tokens 4096] [--repeats 5] [--threads 1]

For each linear shape of a SmolLM2-135M block ([out, in]: q/o 576x576, k/v 192x576, gate/up
1536x576, down 576x1536) and each pattern (50%, 2:4), random weights and a Hessian of random
inputs (``--tokens`` rows) are pruned by ``core.engine.prune.methods.sparsegpt.sparsegpt_prune``
and by the reference code's ``fasterprune`` (written out below from the published algorithm: the
dampening added in place, a sort per block for the threshold, ``topk`` per N:M group).  The table
gives the median milliseconds of each, their ratio and the largest difference of the pruned
weights (0 when the rules and the order of operations agree).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.engine.prune.methods import Target  # noqa: E402
from core.engine.prune.methods.sparsegpt import sparsegpt_prune  # noqa: E402

SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "up_proj": (1536, 576),
          "down_proj": (576, 1536)}


def reference_fasterprune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                          prunen: int = 0, prunem: int = 0, blocksize: int = 128,
                          percdamp: float = 0.01) -> torch.Tensor:
    """The reference SparseGPT step on a copy of the weight and of the Hessian."""
    W, H = weight.clone().float(), hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(W.shape[1])
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    mask = None
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask = tmp <= thresh
        else:
            mask = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / (torch.diag(Hinv1)[i:i + prunem].reshape(
                    (1, -1))) ** 2
                mask.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _median_ms(fn, repeats: int) -> tuple[float, torch.Tensor]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"SparseGPT per linear, {args.tokens} calibration tokens, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'linear':<11}{'[out, in]':>12}{'pattern':>9}{'ours ms':>10}{'reference ms':>14}"
          f"{'ours/ref':>10}{'max |diff|':>12}")
    for name, (rows, cols) in SHAPES.items():
        weight = torch.randn(rows, cols, generator=generator)
        x = torch.randn(args.tokens, cols, generator=generator)
        hessian = (2 / args.tokens) * x.t() @ x
        for pattern in ("0.5", "2:4"):
            target = Target.parse(pattern)
            ours_ms, ours = _median_ms(partial(sparsegpt_prune, weight, hessian, target),
                                       args.repeats)
            ref_ms, ref = _median_ms(partial(reference_fasterprune, weight, hessian,
                                             target.sparsity, target.n, target.m), args.repeats)
            diff = float((ours - ref).abs().max())
            print(f"{name:<11}{str([rows, cols]):>12}{pattern:>9}{ours_ms:>10.1f}"
                  f"{ref_ms:>14.1f}{ours_ms / ref_ms:>9.3f}x{diff:>12.2e}")


if __name__ == "__main__":
    main()
