"""Benchmark: how long each progress stage of a run takes, for the stage weights of
``core/runs/costs.py``.

    python bench/stage_costs.py prune method=wanda samples=8 seqlen=256 max_windows=8 \\
        ppl_seqlen=256 zero_shot_tasks='["sb_everyday"]' zs_limit=20

Runs one spec (kind, then ``field=value`` pairs; a value is read as JSON when it parses) through
``registry.execute`` in this process, nothing stored, with a progress function that notes the
time of every report; a stage lasts from its first report to the next stage's first report (the
last one to the run's end).  Prints one JSON object: per stage its seconds and its last
``done`` / ``total``, and the whole run's seconds.  The heavy imports happen before the clock
starts, as in a worker.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_values(pairs: list[str]) -> dict[str, Any]:
    """'name=value' pairs -> {name: value}, each value JSON when it parses, else text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text
    return values


def stage_times(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """Run the spec; the seconds of each stage in the order they came."""
    from core.runs import registry

    spec = registry.spec_from_dict({"kind": kind, **values})
    marks: list[tuple[float, str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        marks.append((time.perf_counter(), stage, done, total))

    started = time.perf_counter()
    registry.execute(spec, progress, lambda line: print(line, file=sys.stderr, flush=True))
    ended = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    firsts = [m for i, m in enumerate(marks) if i == 0 or marks[i - 1][1] != m[1]]
    for (at, stage, *_), nxt in zip(firsts, [*firsts[1:], (ended,)], strict=True):
        last = [m for m in marks if m[1] == stage][-1]
        entry = stages.setdefault(stage, {"seconds": 0.0, "done": 0, "total": 0})
        entry["seconds"] = round(entry["seconds"] + nxt[0] - at, 3)
        entry["done"], entry["total"] = last[2], last[3]
    return {"spec": values, "kind": kind, "seconds": round(ended - started, 3),
            "stages": stages}


if __name__ == "__main__":
    import torch

    from core.runs import registry

    registry.discover()  # torch, transformers and the kinds imported before the clock starts
    given = parse_values(sys.argv[2:])
    if "threads" in given:
        torch.set_num_threads(int(given.pop("threads")))
    print(json.dumps(stage_times(sys.argv[1], given), indent=1))
