"""Command line for headless use: prune + evaluate one spec and store the result.

    python cli.py prune --model smollm2-135m --method wanda --sparsity 0.5
    python cli.py runs
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from core import config
from core.engine.prune.methods import available
from core.execution.run import run_and_store
from core.runs.specs import PruneSpec
from core.store.db import Store, StoreError
from core.store.record import create_run


def _prune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (or evaluate it dense) and store the results")
    d = PruneSpec()
    p.add_argument("--model", default=d.model, help="smollm2-135m, a local folder or a hub id")
    p.add_argument("--method", default=d.method, choices=["dense", *available()])
    p.add_argument("--sparsity", default=d.sparsity, help="0.5, 50%% or N:M such as 2:4")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter, e.g. dampening=0.01 (JSON values)")
    p.add_argument("--calibration", default=d.calibration,
                   help="wiki-offline, wikitext2, ptb, c4 or a .txt path")
    p.add_argument("--samples", type=int, default=d.samples)
    p.add_argument("--seqlen", type=int, default=d.seqlen)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--blocks", type=int, nargs=2, metavar=("START", "END"))
    p.add_argument("--owl", type=float, nargs=2, metavar=("M", "LAMBDA"),
                   help="OWL layer-wise sparsity (magnitude, wanda, sparsegpt), e.g. --owl 5 0.08")
    p.add_argument("--eval", nargs="+", default=d.ppl_datasets, dest="ppl_datasets")
    p.add_argument("--ppl-seqlen", type=int, default=d.ppl_seqlen)
    p.add_argument("--max-windows", type=int, default=d.max_windows,
                   help="cap on evaluation windows (0 = all)")
    p.add_argument("--zero-shot", nargs="+", default=[], dest="zero_shot_tasks", metavar="TASK",
                   help="lm-eval tasks, e.g. piqa hellaswag arc_easy boolq rte, or the offline "
                        "sb_everyday sb_wiki_next")
    p.add_argument("--num-fewshot", type=int, default=d.num_fewshot)
    p.add_argument("--zs-limit", type=int, default=None, help="examples per zero-shot task")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument("--device", default=d.device)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--save", dest="save_dir", help="save the pruned model (safetensors) here")


def _params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param needs KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_prune(args: argparse.Namespace, store: Store) -> int:
    spec = PruneSpec(
        model=args.model, method=args.method, sparsity=args.sparsity,
        method_params=_params(args.param), calibration=args.calibration, samples=args.samples,
        seqlen=args.seqlen, seed=args.seed, block_range=list(args.blocks) if args.blocks else None,
        owl={"M": args.owl[0], "lambda": args.owl[1]} if args.owl else None,
        ppl_datasets=args.ppl_datasets, ppl_seqlen=args.ppl_seqlen,
        max_windows=args.max_windows or None, zero_shot_tasks=args.zero_shot_tasks,
        num_fewshot=args.num_fewshot, zs_limit=args.zs_limit,
        batch_size=args.batch_size, dtype=args.dtype,
        device=args.device, trust_remote_code=args.trust_remote_code, save_dir=args.save_dir,
    )
    problems = spec.validate()
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    run_id = create_run(store, spec, status="running")
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True)
        bar.n = done
        bar.refresh()

    try:
        result = run_and_store(store, run_id, spec, progress, say=lambda m: tqdm.write(m))
    except Exception as exc:  # stored as failed by run_and_store
        print(f"run {run_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for bar in bars.values():
            bar.close()
    print(f"run {run_id} done")
    for row in result.metrics:
        status = row.get("status", "ok")
        value = status if status != "ok" else f"{row['value']:.4f}"
        print(f"  {row['kind']:<11} {row['dataset']:<14} {row['metric']:<14} {value}")
    return 0


def cmd_runs(store: Store) -> int:
    frame = store.frame("SELECT id, origin, model, method, pattern, sparsity, status, created_at "
                        "FROM runs WHERE origin = 'own' ORDER BY id")
    print(frame.to_string(index=False) if len(frame) else "no runs yet")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python cli.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help=f"results file (default {config.db_path()})")
    sub = parser.add_subparsers(dest="command", required=True)
    _prune_parser(sub)
    sub.add_parser("runs", help="list your runs")
    sub.add_parser("init", help="create the database and import the published figures")
    args = parser.parse_args(argv)
    try:
        store = Store(args.db).init()
        if args.command == "prune":
            return cmd_prune(args, store)
        if args.command == "runs":
            return cmd_runs(store)
        print(f"database ready: {store.path}")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
