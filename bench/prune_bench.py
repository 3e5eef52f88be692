"""Benchmark: pruning time and peak memory per method, and perplexity throughput.

Peak memory is the process's peak resident set (``ru_maxrss``) and counts the model's weights
once touched (they are mapped from the safetensors file); "loaded" is the peak after loading the
model and tokenizing the calibration text.

    python bench/prune_bench.py [--samples 32] [--seqlen 512] [--windows 16]
    python bench/prune_bench.py --reference [--samples 16 --seqlen 256 --threads 1 --rounds 2]

``--reference`` times the engine against the reference code's loops (``bench/reference_loops.py``:
one window at a time, as locuslab/wanda and IST-DASLab/sparsegpt run them) on the same
calibration, alternating, and compares their masks and their perplexity on 8 windows.

Each method runs in its own subprocess so its peak resident memory is its own.  The yardstick is
one dense forward pass over the same calibration set: pruning time / forward time says how many
forward passes a method costs.  Perplexity throughput is compared with a plain batch-size-1 loop.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("magnitude", "wanda", "sparsegpt")


def _measure_method(method: str, samples: int, seqlen: int, sparsity: str) -> dict:
    import torch

    from core.engine import data, environment, models
    from core.engine.prune.methods import Target, get_method
    from core.engine.prune.runner import prune_model

    # The base: the interpreter once a tokenizer is loaded (the first load imports about 110 MiB
    # of transformers' modules), before the model.
    models.load_tokenizer("smollm2-135m")
    baseline_mb = environment.peak_memory_mb()
    model, tok = models.load_model("smollm2-135m")
    calibration = data.calibration_ids(tok, "wiki-offline", samples, seqlen, seed=0)
    loaded_mb = environment.peak_memory_mb()
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    started = time.perf_counter()
    if method == "dense-forward":
        with torch.no_grad():
            for row in calibration:
                model(input_ids=row.unsqueeze(0), use_cache=False)
    else:
        prune_model(model, get_method(method), Target.parse(sparsity), calibration)
    seconds = time.perf_counter() - started
    return {"method": method, "seconds": seconds, "peak_mb": environment.peak_memory_mb(),
            "loaded_mb": loaded_mb, "baseline_mb": baseline_mb, "model_mb": model_mb}


def _measure_perplexity(windows: int, seqlen: int, batch_size: int, device: str,
                        dtype: str) -> dict:
    import torch
    import torch.nn.functional as F

    from core.engine import data, models
    from core.engine.evaluate.perplexity import perplexity

    model, tok = models.load_model("smollm2-135m", dtype=dtype)
    model.to(device)
    ids = data.evaluation_ids(tok, "wiki-offline")

    def synced() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    with torch.no_grad():  # warm-up, so that no loop pays for first-call allocations
        model(input_ids=ids[:seqlen].unsqueeze(0).to(device), use_cache=False)
        timed = {}
        for size in dict.fromkeys((1, batch_size)):
            started = synced()
            result = perplexity(model, ids, seqlen, batch_size=size, max_windows=windows,
                                device=device)
            timed[size] = (result, synced() - started)
        started = synced()
        nlls = []
        for i in range(windows):
            window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0).to(device)
            logits = model(input_ids=window).logits.float()
            nlls.append(F.cross_entropy(logits[0, :-1], window[0, 1:]).item())
        plain_s = synced() - started
    plain = float(torch.tensor(nlls, dtype=torch.float64).mean().exp())
    tokens = windows * seqlen
    return {"tokens": tokens, "plain_tok_s": tokens / plain_s, "plain_ppl": plain,
            "ours": [{"batch_size": size, "tok_s": tokens / seconds, "ppl": result.value}
                     for size, (result, seconds) in timed.items()]}


REFERENCE_CASES = (("wanda", "0.5"), ("wanda", "2:4"), ("ria", "0.5"), ("ria", "2:4"),
                   ("sparsegpt", "0.5"), ("sparsegpt", "2:4"))


def _pruned_once(method: str, pattern: str, calibration: Any, engine: bool) -> tuple[Any, float]:
    """The model pruned by the engine or the reference loop, and the seconds it took."""
    from bench.reference_loops import LOOPS
    from core.engine import models
    from core.engine.prune.methods import Target, get_method
    from core.engine.prune.runner import prune_model

    with contextlib.redirect_stderr(io.StringIO()):  # no progress bars in the table
        model, _ = models.load_model("smollm2-135m", dtype="float32")
    target = Target.parse(pattern)
    started = time.perf_counter()
    if engine:
        prune_model(model, get_method(method), target, calibration)
    else:
        LOOPS[method](model, calibration, target.fraction, target.n or 0, target.m or 0)
    return model, time.perf_counter() - started


def _compare_with_reference(args: argparse.Namespace) -> None:
    """Per case: the median time of each over ``rounds`` alternating runs, their ratio, whether
    every linear's mask is the reference's, and both perplexities."""
    import torch

    from core.engine import data, models
    from core.engine.evaluate.perplexity import perplexity

    torch.set_num_threads(args.threads)
    tok = models.load_tokenizer("smollm2-135m")
    calibration = data.calibration_ids(tok, "wiki-offline", args.samples, args.seqlen, seed=0)
    ids = data.evaluation_ids(tok, "wiki-offline")
    print(f"SmolLM2-135M fp32 on the CPU, {torch.get_num_threads()} thread(s), "
          f"{args.samples} x {args.seqlen} calibration, perplexity on 8 x {args.seqlen}, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'case':<18}{'reference s':>12}{'engine s':>10}{'ratio':>7}{'masks equal':>13}"
          f"{'ref ppl':>10}{'engine ppl':>12}{'ppl diff':>11}")
    for method, pattern in (c for c in REFERENCE_CASES if c[0] in args.methods):
        times: dict[bool, list[float]] = {False: [], True: []}
        models_ = {}
        for _ in range(args.rounds):
            for engine in (False, True):
                models_[engine], seconds = _pruned_once(method, pattern, calibration, engine)
                times[engine].append(seconds)
        ref, ours = (sorted(times[e])[len(times[e]) // 2] for e in (False, True))
        pairs = [(a.weight, b.weight) for (na, a), (nb, b) in zip(
            models_[False].named_modules(), models_[True].named_modules(), strict=True)
            if isinstance(a, torch.nn.Linear) and "lm_head" not in na]
        equal = sum(bool(torch.equal(a == 0, b == 0)) for a, b in pairs)
        ppl = [perplexity(models_[e], ids, args.seqlen, batch_size=4, max_windows=8).value
               for e in (False, True)]
        print(f"{method + ' ' + pattern:<18}{ref:>12.2f}{ours:>10.2f}{ours / ref:>6.2f}x"
              f"{f'{equal}/{len(pairs)}':>13}{ppl[0]:>10.4f}{ppl[1]:>12.4f}"
              f"{ppl[1] / ppl[0] - 1:>+10.4%}")


def _child(args: argparse.Namespace) -> None:
    if args.child == "perplexity":
        result = _measure_perplexity(args.windows, args.seqlen, args.batch_size, args.device,
                                     args.dtype)
    else:
        result = _measure_method(args.child, args.samples, args.seqlen, args.sparsity)
    print("RESULT " + json.dumps(result))


def _run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--samples", str(args.samples),
           "--seqlen", str(args.seqlen), "--windows", str(args.windows),
           "--batch-size", str(args.batch_size), "--sparsity", args.sparsity,
           "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--device", default="cpu", help="perplexity's device (pruning: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="perplexity's model dtype")
    parser.add_argument("--perplexity-only", action="store_true",
                        help="skip the pruning methods; measure perplexity throughput only")
    parser.add_argument("--reference", action="store_true",
                        help="time the engine against the reference loops (bench/)")
    parser.add_argument("--threads", type=int, default=1, help="--reference: torch threads")
    parser.add_argument("--rounds", type=int, default=2, help="--reference: rounds per case")
    parser.add_argument("--methods", nargs="+", default=["wanda", "ria", "sparsegpt"],
                        help="--reference: the methods compared")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        _compare_with_reference(args)
        return
    if args.child:
        _child(args)
        return
    print(f"SmolLM2-135M, {args.samples} calibration samples x {args.seqlen} tokens, "
          f"sparsity {args.sparsity}, CPU threads as configured")
    if not args.perplexity_only:
        forward = _run_child("dense-forward", args)
        rows = [forward] + [_run_child(m, args) for m in METHODS]
        print(f"\n{'method':<14}{'wall s':>10}{'x forward':>11}{'peak MiB':>10}"
              f"{'loaded MiB':>12}{'+ over load':>13}{'peak/model':>12}{'(peak-base)/model':>19}")
        for row in rows:
            ratio = row["seconds"] / forward["seconds"]
            print(f"{row['method']:<14}{row['seconds']:>10.1f}{ratio:>11.2f}"
                  f"{row['peak_mb']:>10.0f}{row['loaded_mb']:>12.0f}"
                  f"{row['peak_mb'] - row['loaded_mb']:>13.0f}"
                  f"{row['peak_mb'] / row['model_mb']:>11.2f}x"
                  f"{(row['peak_mb'] - row['baseline_mb']) / row['model_mb']:>18.2f}x")
        print(f"model: {rows[0]['model_mb']:.0f} MiB of fp32 parameters; base: "
              f"{rows[0]['baseline_mb']:.0f} MiB, the interpreter with torch, transformers and a "
              "tokenizer loaded, before the model")
    ppl = _run_child("perplexity", args)
    print(f"\nperplexity on {ppl['tokens']} wiki-offline tokens (seqlen {args.seqlen}, "
          f"{args.device}, {args.dtype}):")
    print(f"{'loop':<28}{'tokens/s':>10}{'ppl':>10}")
    print(f"{'plain batch-size-1 loop':<28}{ppl['plain_tok_s']:>10.0f}{ppl['plain_ppl']:>10.3f}")
    for row in ppl["ours"]:
        print(f"{'core.perplexity, batch ' + str(row['batch_size']):<28}"
              f"{row['tok_s']:>10.0f}{row['ppl']:>10.3f}")


if __name__ == "__main__":
    main()
