"""The Launch page's forms for the activation-sparsity run kinds.

* :func:`activation_form` -- CoreInfer or sparsity levels (explicit per-block levels), evaluated on
  lm-eval tasks and/or CoreInfer perplexity (``ActivationSpec``);
* :func:`search_form` -- seed 003's parameter search, one search per task
  (``SearchSpec``).

Every field is checked before anything is queued; the message names the field, says what is
wrong and what is allowed.  Parsing of the text fields is in :func:`parse_numbers`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.engine import data
from core.engine.evaluate import zeroshot
from core.execution import jobs
from core.execution.executors import executor_for
from core.present import runs as run_views
from core.present import tables
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.search import SearchSpec
from core.runs.specs import check
from core.store.db import Store, StoreError
from core.store.meta import RunMeta
from ui.run_meta import meta_inputs
from ui.schema_form import field_input, spec_inputs

METHODS = {"CoreInfer": "coreinfer", "Sparsity levels": "sparsity-levels"}
GOAL_MODES = ("Fixed goal", "Relative to CoreInfer's measured kept fraction")


def parse_numbers(label: str, text: str, example: str) -> tuple[list[float], list[str]]:
    """Comma-separated numbers; a problem (worded for the form) when a part is not a number."""
    values, bad = [], []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            bad.append(part)
    if bad:
        return [], [f"{label}: {', '.join(repr(b) for b in bad)} "
                    f"{'is not a number' if len(bad) == 1 else 'are not numbers'}; give "
                    f"comma-separated numbers between 0 and 1, e.g. {example}."]
    return values, []


def split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _model_fields(key: str) -> dict[str, Any]:
    st.subheader("Model")
    model = st.text_input(
        "Model name or folder", ActivationSpec().model, key=f"{key}-model",
        help="'smollm2-135m' is the offline default. CoreInfer supports the Llama family "
             "(SwiGLU FFN) and OPT (ReLU FFN).")
    st.caption(run_views.model_caption(model))
    left, mid, right = st.columns(3, vertical_alignment="bottom")
    dtype = field_input(ActivationSpec, "dtype", key=f"{key}-dtype", container=left)
    device = field_input(ActivationSpec, "device", key=f"{key}-device", container=mid)
    trust = field_input(ActivationSpec, "trust_remote_code", key=f"{key}-trust", container=right)
    return {"model": run_views.local_path(model), "dtype": dtype, "device": device.strip(),
            "trust_remote_code": trust}


def _block_range(key: str, problems: list[str]) -> list[int] | None:
    text = st.text_input("Block range (optional)", "", key=f"{key}-blocks",
                         placeholder="all blocks",
                         help="start,end such as 2,26: convert blocks start to end-1 only (the "
                              "CoreInfer authors keep the first and last few dense).")
    block_range, problem = run_views.parse_block_range(text)
    if problem:
        problems.append(problem)
    return block_range


def _queue(store: Store, cls: type, cells: list[dict[str, Any]], problems: list[str],
           fresh: bool, meta: RunMeta | None = None) -> None:
    """Check every spec built from ``cells`` (a field the form already reported is not
    reported again), then queue them all or nothing, each named by ``meta``."""
    reported = {p.split(":")[0] for p in problems}
    specs = []
    for values in cells:
        spec, found = check(cls, values)
        specs.append(spec)
        problems += [p for p in found if p not in problems and p.split(":")[0] not in reported]
    if problems:
        st.error("Nothing was queued. Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
        return
    try:
        submissions = [jobs.submit(store, spec, fresh=fresh, meta=meta) for spec in specs]
        executor_for(store).ensure_workers()
    except StoreError as exc:
        st.error(str(exc))
        return
    for spec, submission in zip(specs, submissions, strict=True):
        what = spec.summary(tables.short_name(spec.model))
        if submission.reused:
            st.info(f"Nothing new was queued: an identical run (run {submission.run_id}, {what}) "
                    "is already stored or pending, and its results are reused. Tick 'Run again "
                    "even if an identical run is stored' for a fresh run."
                    + run_views.meta_message(submission))
        else:
            st.success(f"Queued run {submission.run_id}: {what}.")
    st.page_link("pages/runs.py", label="Follow it on the Runs page", icon=":material/play_circle:")


def kind_form(store: Store, spec: type) -> None:
    """The generic form of a run kind without a form of its own, built from its schema."""
    key = spec.model_fields["kind"].default
    values = spec_inputs(spec, key=key)
    fresh = st.checkbox("Run again even if an identical run is stored", False,
                        key=f"{key}-fresh")
    problems: list[str] = []
    meta = meta_inputs(key, problems)
    if st.button("Queue run", type="primary", icon=":material/rocket_launch:", key=f"{key}-go"):
        _queue(store, spec, [values], problems, fresh, meta)


def activation_form(store: Store) -> None:
    """CoreInfer / sparsity levels on tasks and perplexity."""
    problems: list[str] = []
    defaults = ActivationSpec()
    common = _model_fields("act")
    st.subheader("Activation sparsity")
    method = METHODS[st.radio("Method", list(METHODS), horizontal=True, key="act-method",
                              help="No weights change: CoreInfer keeps, per prompt, the FFN "
                                   "neurons its tokens chose most often and computes only those "
                                   "while generating.")]
    left, mid, right = st.columns(3)
    sparsity, levels = defaults.sparsity, None
    if method == "coreinfer":
        sparsity = field_input(ActivationSpec, "sparsity", key="act-sparsity", container=left)
    else:
        text = left.text_input("Levels (kept fraction per converted block)", "",
                               key="act-levels", placeholder="0.35, 0.4, 0.45, …",
                               help="One kept fraction per converted block, comma separated "
                                    "(e.g. the levels of a search's best configuration).")
        parsed, bad = parse_numbers("Levels", text, "0.35, 0.4, 0.45")
        problems += bad
        levels = parsed or None
    token_sparsity = field_input(ActivationSpec, "token_sparsity", key="act-token",
                                 container=mid)
    with right:
        block_range = _block_range("act", problems)

    st.subheader("Evaluation")
    tasks_text = st.text_input("lm-eval tasks (comma separated)", ", ".join(
        zeroshot.OFFLINE_TASKS[:1]), key="act-tasks",
        help="Multiple-choice tasks are scored causally (context pre-filled, answer scored "
             "sparse); generation tasks generate sparse. Offline: "
             f"{', '.join(zeroshot.OFFLINE_TASKS)}.")
    left, mid, right = st.columns(3)
    limit = field_input(ActivationSpec, "limit", key="act-limit", container=left)
    fewshot = field_input(ActivationSpec, "num_fewshot", key="act-fewshot", container=mid)
    metric = right.text_input("Metric (optional)", "", key="act-metric",
                              placeholder="acc_norm, acc, exact_match, bleu_max…")
    ppl = st.multiselect("Perplexity datasets (CoreInfer perplexity)", data.known_sources(),
                         key="act-ppl",
                         help="Each window's first half is pre-filled (dense, selects the core "
                              "neurons); its second half is scored sparse.")
    left, mid, right = st.columns(3)
    ppl_seqlen = field_input(ActivationSpec, "ppl_seqlen", key="act-seqlen", container=left)
    max_windows = field_input(ActivationSpec, "max_windows", key="act-windows", container=mid)
    batch = field_input(ActivationSpec, "batch_size", key="act-batch", container=right)
    fresh = st.checkbox("Run again even if an identical run is stored", False, key="act-fresh")
    meta = meta_inputs("act", problems)
    if st.button("Queue activation run", type="primary", icon=":material/rocket_launch:"):
        values = dict(method=method, sparsity=sparsity, token_sparsity=token_sparsity,
                      levels=levels, block_range=block_range, tasks=split_names(tasks_text),
                      num_fewshot=fewshot, limit=limit, metric=metric.strip(),
                      ppl_datasets=ppl, ppl_seqlen=ppl_seqlen, max_windows=max_windows,
                      batch_size=batch, **common)
        _queue(store, ActivationSpec, [values], problems, fresh, meta)


def search_form(store: Store) -> None:
    """Seed 003's parameter search of the sparsity-levels method."""
    problems: list[str] = []
    defaults = SearchSpec()
    common = _model_fields("search")
    st.subheader("Task and goal")
    tasks_text = st.text_input(
        "lm-eval task(s), comma separated", defaults.task, key="search-tasks",
        help="One search is queued per task (seed 003: truthfulqa_gen, bertaqa_en, squadv2, "
             f"commonsense_qa, triviaqa, wmt16-de-en). Offline: "
             f"{', '.join(zeroshot.OFFLINE_TASKS)}.")
    mode = st.radio("Goal", GOAL_MODES, horizontal=True, key="search-goal-mode",
                    help="The mean kept fraction the levels are tuned to. Relative: a factor of "
                         "what CoreInfer actually kept on the task (1.0 = the same actual "
                         "sparsity; 0.9 = seed 003's '10% less sparsity').")
    left, mid, right = st.columns(3)
    goal, factor = None, None
    if mode == GOAL_MODES[0]:
        goal = field_input(SearchSpec, "goal", key="search-goal", container=left)
    else:
        factor = field_input(SearchSpec, "goal_factor", key="search-factor", container=left,
                             value=0.9)
    core = field_input(SearchSpec, "coreinfer_sparsity", key="search-core", container=mid)
    token = field_input(SearchSpec, "token_sparsity", key="search-token", container=right)

    st.subheader("Search")
    weights_text = st.text_input(
        "Sum weights (comma separated)", ", ".join(f"{w:g}" for w in defaults.sum_weights),
        key="search-weights",
        help="One configuration per sum weight; count weight = 1 - sum weight; the threshold is "
             "found by bisection so that the mean level is within the tolerance of the goal.")
    weights, bad = parse_numbers("Sum weights", weights_text, "0.15, 0.3, 0.45")
    problems += bad
    left, mid, right = st.columns(3)
    top_k = field_input(SearchSpec, "top_k", key="search-topk", container=left)
    n_cal = field_input(SearchSpec, "n_calibration", key="search-ncal", container=mid)
    n_search = field_input(SearchSpec, "n_search", key="search-nsearch", container=right)
    left, mid, right = st.columns(3)
    full = field_input(SearchSpec, "full_limit", key="search-full", container=left)
    with mid:
        block_range = _block_range("search", problems)
    tolerance = field_input(SearchSpec, "tolerance", key="search-tol", container=right)
    left, mid, right = st.columns(3)
    fewshot = field_input(SearchSpec, "num_fewshot", key="search-fewshot", container=left)
    metric = mid.text_input("Metric (optional)", "", key="search-metric",
                            placeholder="the task's headline metric")
    batch = field_input(SearchSpec, "batch_size", key="search-batch", container=right)
    fresh = st.checkbox("Run again even if an identical run is stored", False,
                        key="search-fresh")
    meta = meta_inputs("search", problems)
    if st.button("Queue search", type="primary", icon=":material/rocket_launch:"):
        tasks = split_names(tasks_text)
        if not tasks:
            problems.append("Task: give at least one lm-eval task name, e.g. sb_everyday.")
        cells = [dict(task=task, goal=goal, goal_factor=factor, coreinfer_sparsity=core,
                      token_sparsity=token, sum_weights=weights, top_k=top_k,
                      n_calibration=n_cal, n_search=n_search, full_limit=full,
                      block_range=block_range, num_fewshot=fewshot, metric=metric.strip(),
                      tolerance=tolerance, batch_size=batch, **common) for task in tasks]
        _queue(store, SearchSpec, cells, problems, fresh, meta)
