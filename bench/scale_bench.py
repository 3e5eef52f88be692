"""Benchmark: a real model's shape, pruned and evaluated with memory bounded by one block.

Writes a checkpoint of a named shape with random weights (no download; ``core.engine.shapes``:
llama-2-7b, llama-3-8b, llama-2-13b, opt-13b, llama-2-70b, llama-3.2-1b), then for each method
in its own process: reads it one block at a time, prunes it on random calibration tokens,
writes the pruned checkpoint block by block, and evaluates perplexity on random windows by
walking the blocks.  Prints, per phase, the time, the measured peak resident memory (VmHWM,
reset between phases) and the memory plan's estimate (``core.engine.plan``).

    python bench/scale_bench.py --shape llama-2-7b --dtype bfloat16
    python bench/scale_bench.py --shape llama-2-70b --blocks 2 --methods wanda
    python bench/scale_bench.py --shape llama-3.2-1b --compute float32   # the fp32 path

The checkpoint is kept in ``--keep`` (default: the cache's ``bench/`` folder) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30


# -- one method, measured in its own process ----------------------------------------------------
def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak() -> int:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0


class Phases:
    """Time and peak resident memory of each phase (the peak is reset when a phase starts)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.name: str | None = None
        self.started = time.perf_counter()

    def enter(self, name: str) -> None:
        if name == self.name:
            return
        self.close()
        self.name, self.started = name, time.perf_counter()
        _reset_peak()

    def close(self) -> None:
        if self.name is not None:
            row = self.rows.setdefault(self.name, {"seconds": 0.0, "peak": 0, "gpu": 0})
            row["seconds"] += time.perf_counter() - self.started
            row["peak"] = max(row["peak"], _hwm())
            row["gpu"] = max(row["gpu"], _gpu_peak())
        self.name = None


def measure(args: argparse.Namespace, method: str) -> dict[str, dict[str, float]]:
    """Prune and evaluate the checkpoint with ``method``, phase by phase."""
    import torch

    from core.engine import models
    from core.engine.checkpoint import CheckpointWriter, LazyModel
    from core.engine.evaluate.perplexity import blockwise_perplexity
    from core.engine.prune.methods import Target, get_method
    from core.engine.prune.runner import prune_model

    torch.set_num_threads(args.threads)
    phases = Phases()
    phases.enter("loading")
    with contextlib.suppress(Exception):  # as a run's process holds one (where it is installed)
        models.load_tokenizer("smollm2-135m")
    dtype, compute = models.DTYPES[args.dtype], models.DTYPES[args.compute or args.dtype]
    source = LazyModel(args.folder, dtype, compute)
    vocab = source.model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randint(0, vocab, (args.samples, args.seqlen), generator=generator)
    ids = torch.randint(0, vocab, (args.windows * args.ppl_seqlen,), generator=generator)
    with tempfile.TemporaryDirectory(dir=args.keep) as out:
        source.writer = CheckpointWriter(source, Path(out) / "pruned")

        def progress(stage: str, _done: int, _total: int) -> None:
            phases.enter("capturing block inputs" if stage.startswith("capturing")
                         else "pruning a block")

        prune_model(source, get_method(method), Target.parse(args.sparsity), calibration,
                    device=args.device, progress=progress)
        phases.enter("writing the rest")
        folder = source.writer.finish()
        phases.enter("perplexity")
        started = time.perf_counter()
        result = blockwise_perplexity(LazyModel(folder, dtype, compute), ids, args.ppl_seqlen,
                                      args.batch_size, device=args.device)
        tokens_per_s = args.windows * args.ppl_seqlen / (time.perf_counter() - started)
        phases.close()
    phases.rows["perplexity"]["tokens/s"] = tokens_per_s
    phases.rows["perplexity"]["value"] = result.value or float("nan")
    phases.rows["pruning a block"]["per block"] = (phases.rows["pruning a block"]["seconds"]
                                                   / source.n_blocks)
    return phases.rows


def planned(args: argparse.Namespace, method: str, where: str = "host") -> dict[str, int]:
    """The plan's peak per measured phase, on the host or the device."""
    from core.engine import plan, shapes

    config = shapes.config_of(args.shape, args.blocks, args.dtype)
    family = "opt" if config.model_type == "opt" else "llama"
    work = plan.Work(dtype=args.dtype, device=args.device, method=method, samples=args.samples,
                     seqlen=args.seqlen, ppl_windows=args.windows, ppl_seqlen=args.ppl_seqlen,
                     batch_size=args.batch_size, compute_dtype=args.compute or args.dtype)
    built = plan.build(plan.shape_of(config, family), work)
    peak = {p.name: p.host_bytes if where == "host" else p.device_bytes for p in built.phases}
    return {"loading": peak["reading the text"],
            "capturing block inputs": peak["capturing block inputs"],
            "pruning a block": max(peak["pruning a block"], peak["writing a block"]),
            "writing the rest": peak["writing embeddings"],
            "perplexity": max(peak["perplexity"], peak["perplexity head"])}


# -- the table ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-2-7b")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16",
                                                                "float16"])
    parser.add_argument("--compute", default=None, help="compute dtype (default: the dtype; "
                        "float32 shows the path of a CPU without native bf16)")
    parser.add_argument("--blocks", type=int, default=None, help="only the first N blocks")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--ppl-seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak GPU memory is "
                        "then printed against the plan's device figure)")
    parser.add_argument("--keep", default=None, help="folder for the checkpoint (reused)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's method
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return
    run_all(args)


def run_all(args: argparse.Namespace) -> None:
    from core import config
    from core.engine.shapes import write_random_checkpoint

    keep = Path(args.keep or config.cache_dir() / "bench")
    keep.mkdir(parents=True, exist_ok=True)
    name = f"{args.shape}-{args.dtype}" + (f"-{args.blocks}blocks" if args.blocks else "")
    started = time.perf_counter()
    folder = write_random_checkpoint(keep / name, args.shape, args.blocks, args.dtype)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"checkpoint {folder} ({size / GIB:.1f} GiB; written or found in "
          f"{time.perf_counter() - started:.0f} s)")
    print(f"calibration {args.samples} x {args.seqlen}, perplexity {args.windows} x "
          f"{args.ppl_seqlen} (batch {args.batch_size}), compute {args.compute or args.dtype}")
    gpu = args.device.startswith("cuda")
    print("| method | phase | seconds | peak RSS GiB | plan GiB | plan / measured |"
          + (" peak GPU GiB | plan GPU GiB |" if gpu else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if gpu else ""))
    for method in args.methods.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--one", method,
                   "--folder", str(folder), "--keep", str(keep)]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"| {method} | failed | {out.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        plan, device_plan = planned(args, method), planned(args, method, "device")
        for phase, row in rows.items():
            estimate = plan.get(phase, 0)
            print(f"| {method} | {phase} | {row['seconds']:.1f} | {row['peak'] / GIB:.2f} | "
                  f"{estimate / GIB:.2f} | {estimate / max(row['peak'], 1):.2f} |"
                  + (f" {row['gpu'] / GIB:.2f} | {device_plan.get(phase, 0) / GIB:.2f} |"
                     if gpu else ""))
        print(f"| {method} | whole run | "
              f"{sum(r['seconds'] for r in rows.values()):.1f} | "
              f"{max(r['peak'] for r in rows.values()) / GIB:.2f} | "
              f"{max(plan.values()) / GIB:.2f} | |"
              + (f" {max(r['gpu'] for r in rows.values()) / GIB:.2f} | "
                 f"{max(device_plan.values()) / GIB:.2f} |" if gpu else ""))
        print(f"| {method} | per block: {rows['pruning a block']['per block']:.1f} s; "
              f"perplexity {rows['perplexity']['tokens/s']:.0f} tokens/s | | | | |")


if __name__ == "__main__":
    main()
