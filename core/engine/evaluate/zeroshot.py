"""Zero-shot evaluation through lm-evaluation-harness, on the model in memory.

The pruned model is wrapped with ``HFLM(pretrained=<model>, tokenizer=...)`` and evaluated with
``simple_evaluate``: it is never saved and reloaded.  Each task is evaluated on its own, so a task
whose data cannot be loaded fails alone and the other tasks' results are kept.  The project ships
small offline tasks (``core/engine/evaluate/tasks``) for tests and the offline demo.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from core import config

log = logging.getLogger(__name__)

TASKS_SOURCE = Path(__file__).resolve().parent / "tasks"
#: Seed 000's task set (loads from the Hugging Face hub).
DEFAULT_TASKS = ("piqa", "hellaswag", "arc_easy", "boolq", "rte")
#: Shipped with the project, work offline.
OFFLINE_TASKS = ("sb_everyday", "sb_wiki_next", "sb_facts_gen")
#: The Launch form's default: offline and a few seconds on a CPU.
QUICK_TASKS = ("sb_everyday",)
#: Metrics stored for a task, in order of preference for its headline number.
HEADLINE = ("acc_norm", "acc", "exact_match", "exact", "bleu_max", "bleu", "f1")


def lm_eval_version() -> str:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class ZeroShotResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # metric rows for the store
    failures: dict[str, str] = field(default_factory=dict)  # task -> error message
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)  # lm-eval's per-task results


def _fingerprint(folder: Path) -> str:
    """Of the folder's place and contents: the prepared YAMLs name the data by absolute path."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def local_task_dir(source: Path = TASKS_SOURCE) -> Path:
    """The shipped task YAMLs with their data paths made absolute (``{TASKS_DIR}`` replaced)."""
    target = config.cache_dir() / "tasks" / _fingerprint(source)
    if not target.exists():
        partial = config.private_partial(target)
        partial.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.yaml"):
            text = path.read_text().replace("{TASKS_DIR}", str(source))
            (partial / path.name).write_text(text)
        config.publish(partial, target)
    return target


@functools.lru_cache(maxsize=4)
def task_manager(extra_dir: str | None = None) -> Any:
    from lm_eval.tasks import TaskManager

    paths = [str(local_task_dir())] + ([extra_dir] if extra_dir else [])
    return TaskManager(include_path=paths)


def known_tasks() -> set[str]:
    """Every task and group name lm-eval knows here (cached on disk: indexing takes seconds)."""
    key = f"{lm_eval_version()}-{_fingerprint(TASKS_SOURCE)}"
    cache = config.cache_dir() / f"lm_eval_tasks-{key}.json"
    if cache.exists():
        return set(json.loads(cache.read_text()))
    manager = task_manager()
    names = sorted(set(manager.all_tasks) | set(manager.all_groups))
    partial = config.private_partial(cache)
    partial.write_text(json.dumps(names))
    config.publish(partial, cache)  # whole or not at all: another process may read it now
    return set(names)


def validate_tasks(names: list[str]) -> list[str]:
    """A message for every task name lm-eval does not know."""
    if not names:
        return []
    known = known_tasks()
    unknown = [n for n in names if n not in known]
    if not unknown:
        return []
    return [f"Zero-shot task {n!r} is not an lm-eval task; e.g. {', '.join(DEFAULT_TASKS)} or the "
            f"offline {', '.join(OFFLINE_TASKS)}." for n in unknown]


def metric_rows(task: str, results: dict[str, Any], n_samples: int | None) -> list[dict]:
    """Store rows from one task's lm-eval result dict ("acc,none" -> acc, with its stderr)."""
    rows = []
    for key, value in results.items():
        name, comma, filt = key.partition(",")
        if not comma or "_stderr" in name or not isinstance(value, (int, float)):
            continue  # not a metric (e.g. sample_len, alias) or a stderr
        stderr = results.get(f"{name}_stderr,{filt}")
        metric = name if filt in ("", "none") else f"{name} ({filt})"
        rows.append({
            "kind": "zero_shot", "dataset": task, "metric": metric, "value": float(value),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n_samples": n_samples, "note": f"lm-eval {lm_eval_version()}",
        })
    return rows


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    extra_task_dir: str | None = None,
    lm: Any = None,
) -> ZeroShotResult:
    """Evaluate ``model`` (in memory) on each task; failures are recorded per task.

    ``lm``: an lm-eval model wrapping ``model`` to use instead of a plain ``HFLM`` (e.g.
    ``core.activation.coreinfer_lm`` for CoreInfer's causal multiple-choice scores)."""
    import torch

    with torch.inference_mode():
        return _evaluate(model, tokenizer, tasks, num_fewshot, limit, batch_size, device,
                         progress, extra_task_dir, lm)


def _evaluate(model: Any, tokenizer: Any, tasks: list[str], num_fewshot: int,
              limit: int | None, batch_size: int, device: str,
              progress: Callable[[str, int, int], None] | None, extra_task_dir: str | None,
              lm: Any) -> ZeroShotResult:
    """:func:`evaluate`'s body (under ``torch.inference_mode``)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if lm is None:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    manager = task_manager(extra_task_dir)
    result = ZeroShotResult()
    def report(task: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(f"zero-shot {task}", done, total) if progress \
            else None

    for task in tasks:
        report(task)(0, 1)  # building the task
        try:
            with requests_reported(report(task)):
                out = simple_evaluate(model=lm, tasks=[task], num_fewshot=num_fewshot,
                                      limit=limit, task_manager=manager, log_samples=False,
                                      bootstrap_iters=1000, verbosity="WARNING")
        except Exception as exc:  # a task that cannot load its data fails alone
            message = f"{type(exc).__name__}: {exc}"
            log.warning("zero-shot task %s failed: %s", task, message)
            result.failures[task] = message
            result.rows.append({"kind": "zero_shot", "dataset": task, "metric": "acc",
                                "value": None, "status": "missing",
                                "note": f"task failed: {message[:500]}"})
            continue
        samples = out.get("n-samples", {})
        for name, values in out["results"].items():
            count = samples.get(name, {}).get("effective")
            result.raw[name] = values
            result.rows += metric_rows(name, values, count)
    return result


@contextlib.contextmanager
def requests_reported(report: Callable[[int, int], Any]) -> Iterator[None]:
    """While in the block, every request lm-eval's Hugging Face model answers is reported as
    ``report(done, total)``: its progress bar (``tqdm`` in ``lm_eval.models.huggingface``) is
    swapped for one that also tells us, so the numbers are lm-eval's own."""
    from lm_eval.models import huggingface
    from tqdm import tqdm

    class Reporting(tqdm):  # type: ignore[misc]
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.total:
                report(int(self.n), int(self.total))
            return shown

    original = huggingface.tqdm
    huggingface.tqdm = Reporting
    try:
        yield
    finally:
        huggingface.tqdm = original
