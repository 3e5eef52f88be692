"""Benchmark: each dashboard page's render time and memory at 200 and 10,000 stored runs.

    python bench/pages_bench.py [--runs 200,10000] [--pages perplexity,zero_shot,...] [--keep DIR]
                                [--repeat 3]

Builds a results file per size through the store's own API (``create_run`` + ``add_rows``, the
published figures imported as at start-up): several models, the five weight methods at
unstructured and N:M sparsities, three perplexity datasets at two window settings, two zero-shot
task sets, a layer-statistics row per linear layer, block and model summary (about 245 per run),
timings, each perplexity's 40 window NLLs; some pruned runs share a dense baseline, some have
none.  Then each page is rendered
with ``streamlit.testing.v1.AppTest`` in a fresh process (so that peak memory is the page's):
printed are wall and CPU seconds of the first render (which also pays this server process's
one-time imports of the page's modules, torch for some, and its parsing of every stored spec),
of a render after new results (Streamlit's caches emptied, as a new results version does; the
process's caches of what it worked out from stored specs and run columns kept: they never
change; the median of ``--repeat`` renders), of a refresh with nothing changed, and the
process's peak RSS.  The Report shows one section at a time: 'report' is its first section,
'report:Zero-shot' (and so on) another; each section is measured by default.  ``--keep DIR``
keeps (and reuses) the files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = ("overview", "perplexity", "zero_shot", "activation_sparsity", "layers", "report",
         "report:Zero-shot", "report:Key findings", "report:Per-task",
         "report:Layer statistics", "compare", "ablations", "runs")
MODELS = ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-360M", "meta-llama/Llama-2-7b-hf",
          "Qwen/Qwen2.5-0.5B")
METHODS = ("magnitude", "wanda", "sparsegpt", "sparsellm")
SPARSITIES = ("0.3", "0.4", "0.5", "0.6", "0.7", "2:4", "4:8")
DATASETS = ("wikitext2", "ptb", "c4")
TASK_SETS = (("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "rte"),
             ("boolq", "piqa"))
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCKS = 30
WINDOWS = 40  # perplexity windows per dataset

# The page measurement, run in a fresh process: the first render, ``repeat`` renders after new
# results (the median is printed), then a refresh.  ``tab``: a Report section to open first.
MEASURE = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from streamlit.testing.v1 import AppTest
def render(at):
    wall, cpu = time.perf_counter(), time.process_time()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return time.perf_counter() - wall, time.process_time() - cpu
def forget():
    import streamlit as st
    st.cache_resource.clear()
    st.cache_data.clear()
at = AppTest.from_file({app!r}, default_timeout=900).run()
at.switch_page({page!r})
if {tab!r}:
    at.session_state["section"] = {tab!r}
first = render(at)
colds = []
for _ in range({repeat}):
    forget()
    colds.append(render(at))
cold = sorted(colds, key=lambda c: c[1])[len(colds) // 2]
second = render(at)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"first": first, "cold": cold, "second": second, "peak_mb": peak}}))
"""


def make_spec(model: str, method: str, sparsity: str, windows: int | None, tasks: tuple,
              seed: int):  # noqa: ANN201 (a PruneSpec)
    from core.runs.kinds.prune import PruneSpec

    return PruneSpec(model=model, method=method, sparsity="0" if method == "dense" else sparsity,
                     ppl_datasets=list(DATASETS), max_windows=windows,
                     zero_shot_tasks=list(tasks), seed=seed)


def result_rows(rng: random.Random, dense: bool, tasks: tuple) -> tuple[list, list, list]:
    """Metric, layer-statistics and per-window NLL rows (40 windows per dataset) of one run."""
    base = rng.uniform(8, 30)
    metrics = [{"kind": "perplexity", "dataset": d, "metric": "ppl",
                "value": base * (1 if dense else rng.uniform(1.05, 3)), "n_samples": 40}
               for d in DATASETS]
    windows = [{"dataset": m["dataset"],
                "nlls": [math.log(m["value"]) + rng.gauss(0, 0.3) for _ in range(WINDOWS)]}
               for m in metrics]
    metrics += [{"kind": "zero_shot", "dataset": t, "metric": "acc", "value": rng.uniform(.3, .8),
                 "stderr": 0.01, "n_samples": 500} for t in tasks]
    metrics += [{"kind": "timing", "dataset": "-", "metric": "prune_seconds",
                 "value": rng.uniform(5, 500)},
                {"kind": "sparsity", "dataset": "-", "metric": "measured", "value": 0.5}]
    if dense:
        return metrics, [], windows
    layers = [{"block": b, "layer": name, "stat": "sparsity", "value": rng.uniform(.45, .55)}
              for b in range(BLOCKS) for name in LINEARS]
    layers += [{"block": b, "layer": "block", "stat": "sparsity", "value": rng.uniform(.45, .55)}
               for b in range(BLOCKS)]
    layers += [{"block": None, "layer": "model", "stat": s, "value": 0.5}
               for s in ("mean", "std", "overall")]
    return metrics, layers, windows


def build(path: Path, runs: int) -> None:
    """A results file with ``runs`` own runs (about one in eight dense), published figures too."""
    from core.store import published
    from core.store.db import Store
    from core.store.record import create_run

    store = Store(path).init()
    published.sync(store)
    rng = random.Random(0)
    settings = itertools.cycle(itertools.product(MODELS, (None, 64), TASK_SETS))
    made = 0
    while made < runs:
        model, windows, tasks = next(settings)
        batch_metrics, batch_layers, batch_windows = [], [], []
        seed = made
        cells = [("dense", "0")] if made % 3 else []  # a third of the groups: no baseline
        cells += [(m, s) for m in METHODS for s in rng.sample(SPARSITIES, 2)]
        with store.transaction() as con:
            for method, sparsity in cells[: runs - made]:
                spec = make_spec(model, method, sparsity, windows, tasks, seed)
                run_id = create_run(store, spec, status="done", con=con)
                metrics, layers, nll_rows = result_rows(rng, method == "dense", tasks)
                batch_metrics += [(run_id, row) for row in metrics]
                batch_layers += [(run_id, row) for row in layers]
                batch_windows += [(run_id, row) for row in nll_rows]
                made += 1
            store.add_rows(metrics=batch_metrics, layer_stats=batch_layers,
                           windows=batch_windows, con=con)


def measure(path: Path, page: str, repeat: int = 3) -> dict:
    """One page's figures (``page``: a page file's name, or 'report:<section>' for a Report
    section) in a fresh process."""
    name, _, tab = page.partition(":")
    code = MEASURE.format(root=str(ROOT), app=str(ROOT / "app.py"), page=f"pages/{name}.py",
                          tab=tab, repeat=repeat)
    env = {**__import__("os").environ, "SPARSEBENCH_DB": str(path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="200,10000")
    parser.add_argument("--pages", default=",".join(PAGES))
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3,
                        help="renders after new results per page; their median is printed")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pages-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{'runs':>6} | {'page':<24} | {'first wall/CPU s':>17} | {'new results wall/CPU':>20} |"
          f" {'refresh wall/CPU s':>18} | {'peak MB':>7}")
    for runs in (int(n) for n in args.runs.split(",")):
        path = folder / f"bench-{runs}.duckdb"
        if not path.exists():
            started = time.perf_counter()
            build(path, runs)
            print(f"built {path} ({runs} runs) in {time.perf_counter() - started:.0f} s",
                  flush=True)
        for page in args.pages.split(","):
            row = measure(path, page, args.repeat)
            if "error" in row:
                print(f"{runs:>6} | {page:<24} | failed: {row['error']}", flush=True)
                continue
            (w1, c1), (w0, c0), (w2, c2) = row["first"], row["cold"], row["second"]
            print(f"{runs:>6} | {page:<24} | {w1:>7.2f} / {c1:>7.2f} | {w0:>9.2f} / {c0:>8.2f} |"
                  f" {w2:>8.2f} / {c2:>7.2f} | {row['peak_mb']:>7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
