"""Command line for headless use: submit a prune + evaluate run (and its dense baseline) and
execute it here, through the worker's supervised child process, storing the results.  With
SPARSEBENCH_EXECUTOR=ray the runs go to the Ray executor instead and are followed here.

    python cli.py prune --model smollm2-135m --method wanda --sparsity 0.5
    python cli.py runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from core import config
from core.execution import jobs
from core.execution.executors import Executor, executor_for, executor_name
from core.execution.worker import Worker
from core.present import runs as run_views
from core.runs.kinds.prune import PruneSpec
from core.runs.options import add_method_options, add_spec_options, spec_values
from core.runs.specs import check
from core.store import meta, published
from core.store.db import Store, StoreError


def _prune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model (or evaluate it dense) and store the results",
                       description="Every option below comes from the run spec's schema and "
                                   "the pruning methods' parameters.")
    add_spec_options(p, PruneSpec)
    p.add_argument("--fresh", action="store_true",
                   help="run again even if an identical run is stored")
    add_meta_options(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the chosen method as KEY=VALUE (JSON values); the "
                        "same as --<method>-<key>")
    add_method_options(p)


def add_meta_options(parser: argparse.ArgumentParser) -> None:
    """--name, --notes and --tag: what the run is called (not part of its spec or identity)."""
    group = parser.add_argument_group("name, notes and tags (not part of the run's identity)")
    group.add_argument("--name", default=None,
                       help=f"the run's name (at most {meta.NAME_CHARS} characters)")
    group.add_argument("--notes", default=None,
                       help=f"notes on the run (at most {meta.NOTES_CHARS} characters)")
    group.add_argument("--tag", action="append", default=[], metavar="TAG",
                       help=f"a tag (repeat it, or separate tags by commas; at most "
                            f"{meta.MAX_TAGS} of up to {meta.TAG_CHARS} letters, digits, "
                            f"spaces and {' '.join(meta.TAG_EXTRA.strip())})")


def run_meta(args: argparse.Namespace) -> meta.RunMeta:
    """The checked name, notes and tags of the options (``ValueError`` naming the field)."""
    return meta.check(args.name, args.notes, meta.split_tags(args.tag))


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
            values[key] = run_views.local_path(values[key])
    if "ppl_datasets" in values:
        values["ppl_datasets"] = [run_views.local_path(p) for p in values["ppl_datasets"]]
    return check(PruneSpec, values)


def cmd_prune(args: argparse.Namespace, store: Store) -> int:
    """Submit the run as the dashboard does (dense baseline included), then execute what this
    submit queued through the worker's own code: a supervised child process with heartbeats,
    so nobody's recovery fails it."""
    spec, problems = prune_spec(args)
    if spec is None:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        where = executor_name()
        submission = jobs.submit(store, spec, fresh=args.fresh, meta=run_meta(args),
                                 checked=True)  # prune_spec checked it
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if submission.reused:
        status = store.frame("SELECT status FROM runs WHERE id = ?", [submission.run_id])
        print(f"an identical run {submission.run_id} is {status.iloc[0, 0]}: nothing new was "
              "queued (--fresh runs it again)." + run_views.meta_message(submission))
        return print_metrics(store, submission.run_id)
    # the run first: its dense baseline only serves the comparison (jobs.submit queues it after)
    run_ids = [i for i in (submission.run_id, submission.baseline_id) if i is not None]
    if where != "local":
        return run_elsewhere(executor_for(store), store, run_ids)
    return run_here(store, spec, submission.run_id, run_ids)


def run_here(store: Store, spec: PruneSpec, run_id: int, run_ids: list[int]) -> int:
    """Execute the queued ``run_ids`` here through the worker's supervised child process (or
    follow one a background worker took), each whatever became of the others (none is left
    queued); the metrics of ``run_id`` at the end."""
    worker = Worker(store.path, spec.device)
    worker.name = f"cli:{worker.name}"
    finals = {}
    for queued in run_ids:
        if jobs.claim(store, queued, worker.name):
            finals[queued] = worker.supervise(queued, on_poll=LiveOutput(store, queued))
        else:  # a background worker took it (or it ended meanwhile): follow it there
            finals[queued] = follow(store, queued)
    return conclude(store, run_id, finals)


def conclude(store: Store, run_id: int, finals: dict[int, str]) -> int:
    """Report how each run ended; the run's metrics (0) unless it did not end done (1).  A
    failed dense baseline is said, with its reason: the change from dense is then missing."""
    for queued, final in finals.items():
        if not reported(store, queued, final) and queued != run_id:
            print(f"note: the dense baseline (run {queued}) {final}: this run's change from "
                  "dense and retention are not shown until a dense run of the same evaluation "
                  "is done.", file=sys.stderr)
    return print_metrics(store, run_id) if finals.get(run_id) == "done" else 1


def run_elsewhere(executor: Executor, store: Store, run_ids: list[int]) -> int:
    """Hand the runs to the configured executor (Ray) and follow them until they end."""
    for run_id in run_ids:
        executor.submit(run_id)
    return conclude(store, run_ids[0], {run_id: follow(store, run_id) for run_id in run_ids})


def reported(store: Store, run_id: int, final: str) -> bool:
    """Print how a run ended (its error when not done); whether it is done."""
    print(f"run {run_id} {final}")
    if final != "done":
        error = store.frame("SELECT error FROM runs WHERE id = ?", [run_id])
        print(f"run {run_id} {final}: {error.iloc[0, 0]}", file=sys.stderr)
    return final == "done"


def follow(store: Store, run_id: int) -> str:
    """Wait for a run another worker executes; its final status."""
    output = LiveOutput(store, run_id)
    while True:
        output()
        status = str(store.frame("SELECT status FROM runs WHERE id = ?", [run_id]).iloc[0, 0])
        if status not in jobs.ACTIVE:
            return status
        time.sleep(1.0)


class LiveOutput:
    """Prints a run's new log lines and its progress while the worker supervises it."""

    def __init__(self, store: Store, run_id: int) -> None:
        self.store, self.run_id, self.seen, self.bar = store, run_id, 0, None

    def __call__(self) -> None:
        control = self.store.control
        for line_id, _, line in control.logs(self.run_id, after=self.seen):
            tqdm.write(line)
            self.seen = line_id
        value = control.live([self.run_id]).get(self.run_id, {}).get("progress")
        if value:
            if (self.bar is None or self.bar.desc != value["stage"]
                    or self.bar.total != value["total"]):  # a stage's total may come later
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=value["total"], desc=value["stage"], unit="step")
            self.bar.n = value["done"]
            self.bar.refresh()


def print_metrics(store: Store, run_id: int) -> int:
    """The stored metrics of a run, one per line."""
    rows = store.frame("SELECT kind, dataset, metric, value, status FROM metrics "
                       "WHERE run_id = ? ORDER BY kind, dataset, metric", [run_id])
    for row in rows.itertuples():
        value = row.status if row.status != "ok" else f"{row.value:.4f}"
        print(f"  {row.kind:<11} {row.dataset:<14} {row.metric:<14} {value}")
    return 0


def cmd_runs(store: Store, archived: bool = False) -> int:
    """List the own runs (the archived ones too with ``archived``)."""
    frame = store.frame("SELECT id, name, model, method, pattern, sparsity, status, created_at, "
                        "array_to_string(tags, ', ') AS tags, archived_at FROM runs "
                        "WHERE origin = 'own'" + ("" if archived else " AND archived_at IS NULL")
                        + " ORDER BY id")
    if not archived:
        frame = frame.drop(columns=["archived_at"])
    print(frame.fillna("").to_string(index=False) if len(frame) else "no runs yet")
    return 0


def cmd_archive(store: Store, run_ids: list[int], restore: bool) -> int:
    """Archive (or restore) own runs; a published or active run refuses them all."""
    try:
        changed = store.restore(run_ids) if restore else store.archive(run_ids)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'restored' if restore else 'archived'}: {', '.join(map(str, changed)) or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``prune`` options come from the spec schema and the methods."""
    parser = argparse.ArgumentParser(prog="python cli.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help=f"results file (default {config.db_path()})")
    sub = parser.add_subparsers(dest="command", required=True)
    _prune_parser(sub)
    runs = sub.add_parser("runs", help="list your runs (not the archived ones)")
    runs.add_argument("--archived", action="store_true", help="list the archived runs too")
    for name, what in (("archive", "leave runs out of the lists (kept whole)"),
                       ("restore", "bring archived runs back")):
        sub.add_parser(name, help=what).add_argument("run_ids", nargs="+", type=int,
                                                     metavar="RUN")
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
            return cmd_runs(store, args.archived)
        if args.command in ("archive", "restore"):
            return cmd_archive(store, args.run_ids, args.command == "restore")
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
