"""Command line for headless use: prune + evaluate one spec and store the result.

    python cli.py prune --model smollm2-135m --method wanda --sparsity 0.5
    python cli.py runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from core import config
from core.execution.run import run_and_store
from core.runs.kinds.prune import PruneSpec
from core.runs.options import add_method_options, add_spec_options, spec_values
from core.runs.specs import check
from core.store import published
from core.store.db import Store, StoreError
from core.store.record import create_run


def _prune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (or evaluate it dense) and store the results",
                       description="Every option below comes from the run spec's schema and "
                                   "the pruning methods' parameters.")
    add_spec_options(p, PruneSpec)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the chosen method as KEY=VALUE (JSON values); the "
                        "same as --<method>-<key>")
    add_method_options(p)


def _params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param needs KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def prune_spec(args: argparse.Namespace) -> tuple[PruneSpec | None, list[str]]:
    """The spec the options describe, or every problem with them."""
    try:
        values = spec_values(args, PruneSpec)
        values["method_params"] = {**values.get("method_params", {}), **_params(args.param)}
    except ValueError as exc:
        return None, [str(exc)]
    for key in ("model", "calibration", "save_dir"):
        if isinstance(values.get(key), str):
            values[key] = local_path(values[key])
    values["ppl_datasets"] = [local_path(p) for p in values.get("ppl_datasets", [])] or (
        values.get("ppl_datasets", PruneSpec().ppl_datasets))
    return check(PruneSpec, values)


def local_path(text: str) -> str:
    """A local path made absolute (the worker runs in another folder); other text unchanged."""
    path = Path(text).expanduser()
    return str(path.resolve()) if text.startswith(("/", ".", "~")) or path.exists() else text


def cmd_prune(args: argparse.Namespace, store: Store) -> int:
    spec, problems = prune_spec(args)
    if spec is None:
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


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``prune`` options come from the spec schema and the methods."""
    parser = argparse.ArgumentParser(prog="python cli.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help=f"results file (default {config.db_path()})")
    sub = parser.add_subparsers(dest="command", required=True)
    _prune_parser(sub)
    sub.add_parser("runs", help="list your runs")
    sub.add_parser("init", help="create the database and import the published figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        store = Store(args.db).init()
        if args.command == "prune":
            return cmd_prune(args, store)
        if args.command == "runs":
            return cmd_runs(store)
        if not store.writable:
            print(f"database ready, read-only: {store.path} (published figures not imported)")
        elif published.sync(store):
            print(f"database ready: {store.path} (published figures imported)")
        else:
            print(f"database ready: {store.path} (published figures up to date)")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
