"""What each stage of a run costs, measured, for the stage weights of its progress bar
(``core.runs.progress``; each kind's ``stage_plan`` adds them up for its spec).

How: ``bench/stage_costs.py`` timed each stage (from its first progress report to the next
stage's) of runs on the offline SmolLM2-135M (30 blocks, float32, CPU with 2 threads, file cache
warm), nothing stored.  Prune runs: magnitude, wanda, sparsegpt and wanda + OWL with 8 and 16
calibration samples of 256 tokens of wiki-offline (a line through the two gives a method's
fixed and per-token cost), perplexity on 8 and 32 windows of 256 tokens, zero-shot on
sb_everyday (20, 40 examples) and sb_wiki_next (50), saving.  Activation: CoreInfer on
sb_everyday (20, 40 examples) and split perplexity (4 x 128, 8 x 128).  Search: sb_everyday,
8 calibration prompts, 2 configurations of 10 examples, full set 20.  The machine was shared
with other work, so each figure is the least of two runs (sparsellm, activation, search: one).

Only the ratios matter: a bigger model or a GPU scales the stages roughly together, and the
time left is taken from the measured pace of the run itself.  A default-sized wanda run (32 x
512 calibration tokens, 32 windows of 512) comes out as loading 2.5%, calibration text 2.8%,
pruning 56%, perplexity 38%.
"""

from __future__ import annotations

from functools import cache

from core.engine.evaluate.zeroshot import TASKS_SOURCE

LOAD_S = 1.7  # loading the model (15.8 s with a cold file cache)
CALIBRATION_S = 1.9  # tokenizing the calibration text, drawing the windows
CAPTURE_S_PER_KTOKEN = 0.003  # block 0's inputs, per 1000 calibration tokens
OWL_S_PER_KTOKEN = 2.2  # OWL's dense walk (outlier ratios of every block)
#: Pruning, per method: (fixed seconds, seconds per 1000 calibration tokens).  Measured, least
#: of two: magnitude 3.0 s; wanda 8.5 / 12.8 s; sparsegpt 22.8 / 29.2 s; sparsellm 158 / 363 s
#: (one run each; taken as all per token) for 2048 / 4096 tokens.
PRUNE_S = {"magnitude": (3.0, 0.0), "wanda": (4.2, 2.1), "sparsegpt": (16.4, 3.1),
           "sparsellm": (0.0, 77.0)}
SAVE_S = 1.0  # writing the model (safetensors): 0.7-1.5 s
PPL_FIXED_S = 0.2  # reading and tokenizing an evaluation text
PPL_S_PER_KTOKEN = 1.6  # perplexity windows, per 1000 tokens (8 x 256: 3.2 s)
TASK_FIXED_S = 0.4  # building one lm-eval task
#: An example of a multiple-choice task (lm-eval, dense): sb_everyday (2 choices) 0.06 s,
#: sb_wiki_next (4 longer choices) 0.27 s; between the two for any other task.
TASK_S_PER_EXAMPLE = 0.15
TASK_S_PER_EXAMPLE_OF = {"sb_everyday": 0.06, "sb_wiki_next": 0.27}
#: Examples of seed 000's tasks as lm-eval scores them (the split it evaluates).
TASK_SIZES = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 2376, "boolq": 3270, "rte": 277}
COREINFER_WARMUP_S = 6.5  # the first lm-eval task of a CoreInfer run (activation, search)
COREINFER_FIXED_S = 2.2  # each CoreInfer scoring (its lm-eval model and task)
COREINFER_S_PER_EXAMPLE = 0.29  # an sb_everyday example under CoreInfer
SPLIT_PPL_S_PER_KTOKEN = 2.7  # CoreInfer's split perplexity (pre-fill, then a token at a time)
SCORES_S_PER_PROMPT = 0.03  # a search's neuron scores, per calibration prompt (after warm-up)
#: Guesses where the spec leaves a count open: windows of a whole text, examples of a task.
WINDOWS_GUESS = 128
EXAMPLES_GUESS = 500


@cache
def offline_task_size(task: str) -> int | None:
    """How many examples one of the offline tasks has (None for any other task)."""
    path = TASKS_SOURCE / f"{task}.jsonl"
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        return None


def task_size(task: str) -> int | None:
    """How many examples a task has, where known (the offline tasks, seed 000's set)."""
    return offline_task_size(task) or TASK_SIZES.get(task)


def task_s(task: str, limit: int | None) -> float:
    """One zero-shot task on ``limit`` examples, on the reference machine (offline model)."""
    return TASK_FIXED_S + TASK_S_PER_EXAMPLE_OF.get(task, TASK_S_PER_EXAMPLE) * task_examples(
        task, limit)


def task_examples(task: str, limit: int | None) -> int:
    """The examples a task is scored on: ``limit``, but at most the task's size when known."""
    size = task_size(task)
    if limit is None:
        return size if size is not None else EXAMPLES_GUESS
    return min(limit, size) if size is not None else limit


def windows(max_windows: int | None) -> int:
    """The perplexity windows of one text (a guess when all are taken)."""
    return max_windows or WINDOWS_GUESS


def prune_s(method: str, ktokens: float) -> float:
    """Pruning with ``method`` on ``ktokens`` thousand calibration tokens."""
    fixed, per_ktoken = PRUNE_S.get(method, PRUNE_S["wanda"])
    return fixed + per_ktoken * ktokens


def coreinfer_s(task: str, limit: int | None) -> float:
    """One CoreInfer scoring of ``task`` on ``limit`` examples (after the warm-up)."""
    return COREINFER_FIXED_S + COREINFER_S_PER_EXAMPLE * task_examples(task, limit)
