"""Launch: queue a run (prune + evaluate, activation sparsity, parameter search) for the worker.

No ``st.form`` here on purpose: the fields that depend on a choice (method parameters, the path
of a local text file) must appear as soon as the choice is made.
"""

from __future__ import annotations

import streamlit as st

from core import config
from core.engine import data
from core.engine.evaluate import zeroshot
from core.engine.prune.methods import REGISTRY, available
from core.execution import jobs
from core.execution.local import LocalExecutor
from core.present import runs as run_views
from core.present import tables
from core.runs import sweep
from core.runs.specs import DTYPE_CHOICES, LIMITS, OWL_METHODS, PruneSpec
from core.store.db import StoreError
from ui.components import store_or_stop, use_app_menu

LOCAL_FILE = "a local .txt file…"

use_app_menu()
st.title("Launch a run")
st.caption("Queue a run for the background worker: prune a causal LM (or keep it dense) and "
           "evaluate it, apply activation sparsity, or search the sparsity levels. Follow it on "
           "the Runs page.")
with store_or_stop():
    store = tables.session_store(st.session_state)
if not store.writable:
    st.error("The results database is read-only here: runs cannot be launched. Set "
             "SPARSEBENCH_DB to a writable file and restart.")
    st.stop()

RUN_KINDS = ("Prune + evaluate", "Activation sparsity", "Parameter search")
run_kind = st.radio("Run kind", RUN_KINDS, horizontal=True,
                    help="Activation sparsity: CoreInfer or per-block sparsity levels (no weights "
                         "change). Parameter search: seed 003's search of the sparsity levels, "
                         "compared with CoreInfer.")
if run_kind != RUN_KINDS[0]:
    from ui import activation_forms

    (activation_forms.activation_form if run_kind == RUN_KINDS[1]
     else activation_forms.search_form)(store)
    st.caption(f"Results are stored in `{config.db_path()}`.")
    st.stop()

defaults = PruneSpec()
sources = data.known_sources()
problems: list[str] = []  # what the form itself finds (the spec checks the rest)


def text_files(field: str, label: str, key: str, many: bool) -> list[str]:
    """The path(s) typed for a local text source, made absolute; problems are noted."""
    text = st.text_input(
        label, key=key,
        placeholder="/path/to/text.txt" + (", /path/to/other.txt" if many else ""),
        help="UTF-8 text. Calibration draws random windows from the whole file; evaluation "
             "uses the whole file.")
    if many:
        paths = run_views.split_paths(text)
    else:
        paths = [run_views.local_path(text)] if text.strip() else []
    problems.extend(run_views.text_file_problems(field, paths))
    return paths


st.subheader("Model")
model = st.text_input(
    "Model name or folder", defaults.model,
    help="'smollm2-135m' is the offline default (installed with the app). Or a local folder "
         "with a transformers model, or a hub id such as meta-llama/Llama-2-7b-hf (needs "
         "network access).")
left, mid, right = st.columns(3, vertical_alignment="bottom")
dtype = left.selectbox("Weights dtype", DTYPE_CHOICES)
device = mid.text_input("Device", defaults.device, help="cpu, cuda, cuda:1 or mps")
trust = right.checkbox("Trust remote code", False,
                       help="Runs Python code shipped with the model. Off unless you trust the "
                            "model's authors.")

st.subheader("Pruning")
methods = ["dense", *available()]
method = st.selectbox("Method", methods, index=methods.index(defaults.method),
                      format_func=tables.method_label)
st.caption(REGISTRY[method].description if method in REGISTRY
           else "No pruning: the dense baseline that pruned runs are compared with.")
params: dict[str, object] = {}
owl = None
block_range = None
sparsity = "0"
if method != "dense":
    left, right = st.columns(2)
    sparsity = left.text_input("Sparsity", defaults.sparsity,
                               help="Fraction of weights pruned: 0.5 or 50%; or N:M such as 2:4 "
                                    "(N pruned in every M consecutive inputs).")
    block_text = right.text_input("Block range (optional)", "", placeholder="all blocks",
                                  help="start,end such as 0,15: prune blocks start to end-1 "
                                       "only; empty = every block.")
    block_range, block_problem = run_views.parse_block_range(block_text)
    if block_problem:
        problems.append(block_problem)
    owl = None
    if method in OWL_METHODS:
        use_owl = st.checkbox(
            "OWL layer-wise sparsity", False,
            help="Outlier-weighted layer-wise sparsity (Yin et al. 2024): blocks with more "
                 "outlier activations are pruned less; the block targets average to the "
                 "sparsity above. Unstructured targets only; needs calibration data.")
        if use_owl:
            left, right = st.columns(2)
            owl = {"M": float(left.number_input("OWL M (outlier threshold × mean)", 0.1, 1000.0,
                                                value=5.0)),
                   "lambda": float(right.number_input("OWL lambda (max deviation)", 0.0, 0.49,
                                                      value=0.08, format="%.3f"))}
    method_params = run_views.method_parameters(method)
    columns = st.columns(max(len(method_params), 1))
    for column, (name, default) in zip(columns, method_params.items(), strict=False):
        label = run_views.parameter_label(name)
        if isinstance(default, bool):
            params[name] = column.checkbox(label, default)
        elif isinstance(default, int):
            params[name] = int(column.number_input(label, value=default, step=1))
        elif default is None:  # "architecture default" (e.g. SparseLLM's alpha): empty field
            value = column.number_input(label, value=None, format="%.4f",
                                        placeholder="architecture default")
            if value is not None:  # whole numbers as int (e.g. SparseLLM's iterations)
                params[name] = int(value) if float(value).is_integer() else value
        else:
            params[name] = float(column.number_input(label, value=float(default), format="%.4f"))

calibration, samples, seqlen, seed = (defaults.calibration, defaults.samples, defaults.seqlen,
                                      defaults.seed)
if method in REGISTRY and (REGISTRY[method].needs_calibration or owl is not None):
    st.subheader("Calibration")
    choice = st.selectbox("Calibration text", [*sources, LOCAL_FILE],
                          index=sources.index(defaults.calibration),
                          help="Where the calibration windows come from.")
    if choice == LOCAL_FILE:
        paths = text_files("Calibration text", "Calibration .txt file",
                           "calibration-path", many=False)
        calibration = paths[0] if paths else ""
    else:
        calibration = choice
    left, mid, right = st.columns(3)
    samples = int(left.number_input("Samples", *LIMITS["samples"], value=defaults.samples))
    seqlen = int(mid.number_input("Tokens per sample", *LIMITS["seqlen"], value=defaults.seqlen))
    seed = int(right.number_input("Seed", 0, 2**31 - 1, value=defaults.seed))

st.subheader("Perplexity evaluation")
chosen = st.multiselect("Evaluation datasets", [*sources, LOCAL_FILE],
                        default=defaults.ppl_datasets,
                        help="wiki-offline is installed with the app; wikitext2, ptb and c4 load "
                             "from the Hugging Face hub.")
ppl_datasets = [name for name in chosen if name != LOCAL_FILE]
if LOCAL_FILE in chosen:
    ppl_datasets += text_files("Evaluation", "Evaluation .txt files (comma separated)",
                                   "evaluation-paths", many=True)
left, mid, right = st.columns(3)
ppl_seqlen = int(left.number_input("Window length (tokens)", *LIMITS["seqlen"],
                                   value=defaults.ppl_seqlen))
max_windows = int(mid.number_input("Max windows (0 = all)", 0, LIMITS["max_windows"][1],
                                   value=defaults.max_windows or 0))
batch_size = int(right.number_input("Batch size", *LIMITS["batch_size"],
                                    value=defaults.batch_size))

st.subheader("Zero-shot evaluation (lm-evaluation-harness)")
offline_tasks = list(zeroshot.OFFLINE_TASKS)
task_choices = [*offline_tasks, *zeroshot.DEFAULT_TASKS]
picked = st.multiselect(
    "Zero-shot tasks", task_choices, default=[],
    help=f"{', '.join(offline_tasks)} ship with the app (offline); "
         f"{', '.join(zeroshot.DEFAULT_TASKS)} are seed 000's set and download their data "
         "from the Hugging Face hub.")
other_tasks = st.text_input("Other lm-eval task names (comma separated)", "",
                            placeholder="e.g. winogrande, arc_challenge",
                            help="Any task lm-eval knows; checked before the run is queued.")
zero_shot_tasks = list(dict.fromkeys(
    [*picked, *(t.strip() for t in other_tasks.split(",") if t.strip())]))
num_fewshot, zs_limit = 0, None
if zero_shot_tasks:
    left, right = st.columns(2)
    num_fewshot = int(left.number_input("Few-shot examples", 0, 64, value=0))
    zs_limit = int(right.number_input("Examples per task (0 = all)", 0, 10**7, value=0)) or None

st.subheader("Sweep (optional)")
sweep_text = st.text_area(
    "Grid: one parameter per line, name = values", "", height=80,
    placeholder="method_params.alpha = 0.01, 0.1, 1\nmethod_params.beta = 0.1, 1, 5",
    help="Queues one run per combination and shows them as a grid on the Compute & "
         "ablations page. Parameters: method_params.<name> (e.g. alpha, beta for SparseLLM; "
         "dampening for SparseGPT), owl.M, owl.lambda, sparsity, samples, seqlen, seed.")
grid, grid_problems = run_views.parse_grid(sweep_text)
problems.extend(grid_problems)

st.subheader("Output")
save_dir = st.text_input("Save the pruned model to (optional folder)", "",
                         placeholder="not saved")
fresh = st.checkbox("Run again even if an identical run is stored", False)

if st.button("Queue run", type="primary", icon=":material/rocket_launch:"):
    spec = PruneSpec(
        model=run_views.local_path(model), method=method, sparsity=sparsity.strip(),
        method_params=params, calibration=calibration, samples=samples, seqlen=seqlen,
        seed=seed, block_range=block_range, owl=owl, ppl_datasets=ppl_datasets,
        ppl_seqlen=ppl_seqlen, zero_shot_tasks=zero_shot_tasks, num_fewshot=num_fewshot,
        zs_limit=zs_limit,
        max_windows=max_windows or None, batch_size=batch_size, dtype=dtype,
        device=device.strip(), trust_remote_code=trust,
        save_dir=run_views.local_path(save_dir) or None,
    )
    problems = run_views.merge_problems(problems, spec.validate())
    if grid and not problems:
        problems = sweep.validate_grid(spec, grid)
    if problems:
        st.error("Nothing was queued. Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
    else:
        try:
            if grid:
                submission = jobs.submit_sweep(store, spec, grid, fresh=fresh)
            else:
                submission = jobs.submit(store, spec, fresh=fresh)
            LocalExecutor(store).ensure_workers()
            message = (run_views.sweep_message(submission) if grid
                       else run_views.submission_message(store, submission))
        except ValueError as exc:  # a grid cell the spec checks refuse
            st.error(f"Nothing was queued. Please fix: {exc}")
        except StoreError as exc:
            st.error(str(exc))
        else:
            nothing_new = (submission.reused == len(submission.run_ids) if grid
                           else submission.reused)
            (st.info if nothing_new else st.success)(message)
            st.page_link("pages/runs.py", label="Follow it on the Runs page",
                         icon=":material/play_circle:")

st.caption(f"Results are stored in `{config.db_path()}`.")
