"""Launch: queue a run (prune + evaluate, activation sparsity, parameter search) for the worker.

No ``st.form`` here on purpose: the fields that depend on a choice (method parameters, the path
of a local text file) must appear as soon as the choice is made.
"""

from __future__ import annotations

import streamlit as st

from core import config
from core.engine import data
from core.engine.evaluate import zeroshot
from core.engine.prune import owl as owl_targets
from core.engine.prune.methods import REGISTRY, available
from core.execution import jobs
from core.execution.executors import executor_for
from core.present import runs as run_views
from core.present import tables
from core.runs import registry, sweep
from core.runs.kinds.prune import OWL_METHODS, PruneSpec
from core.runs.specs import check
from core.store.db import StoreError
from core.store.meta import RunMeta
from ui.components import store_or_stop, use_app_menu
from ui.run_meta import meta_inputs
from ui.schema_form import field_input, params_inputs

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

kinds = registry.all_kinds()
titles = [kind.title for kind in kinds]
run_kind = kinds[titles.index(st.radio(
    "Run kind", titles, horizontal=True,
    help="Activation sparsity: CoreInfer or per-block sparsity levels (no weights change). "
         "Parameter search: seed 003's search of the sparsity levels, compared with "
         "CoreInfer."))]
if run_kind.name != "prune":
    from ui import activation_forms

    forms = {"activation": activation_forms.activation_form,
             "search": activation_forms.search_form}
    forms.get(run_kind.name, lambda s: activation_forms.kind_form(s, run_kind.spec))(store)
    st.caption(f"Results are stored in `{config.db_path()}`.")
    st.stop()

defaults = PruneSpec()
sources = data.known_sources()
problems: list[str] = []  # what the form itself finds (the spec checks the rest)


def queue(spec: PruneSpec, grid: dict | None, fresh: bool, meta: RunMeta | None) -> bool:
    """Submit the checked spec (or its sweep), named by ``meta``, and say what was queued or
    reused; whether it was."""
    try:
        if grid:
            submission = jobs.submit_sweep(store, spec, grid, fresh=fresh, meta=meta)
        else:
            submission = jobs.submit(store, spec, fresh=fresh, meta=meta, checked=True)
        executor_for(store).ensure_workers()
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
        return True
    return False


def text_files(field: str, label: str, key: str, many: bool) -> list[str]:
    """The path(s) typed for a local text source, made absolute; problems are noted."""
    text = st.text_input(
        label, key=key,
        placeholder="/path/to/text.txt" + (", /path/to/other.txt" if many else ""),
        help="UTF-8 text. Calibration draws random windows from the file's first million "
             "tokens; evaluation reads only as many windows as Max windows asks (0: the whole "
             "file).")
    if many:
        paths = run_views.split_paths(text)
    else:
        paths = [run_views.local_path(text)] if text.strip() else []
    problems.extend(run_views.text_file_problems(field, paths))
    return paths


st.subheader("Model")
model = field_input(PruneSpec, "model", key="prune-model")
st.caption(run_views.model_caption(model))
left, mid, right = st.columns(3, vertical_alignment="bottom")
dtype = field_input(PruneSpec, "dtype", key="prune-dtype", container=left)
device = field_input(PruneSpec, "device", key="prune-device", container=mid)
trust = field_input(PruneSpec, "trust_remote_code", key="prune-trust", container=right)

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
    sparsity = field_input(PruneSpec, "sparsity", key="prune-sparsity", container=left)
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
            owl = {"M": float(left.number_input("OWL M (outlier threshold × mean)",
                                                value=owl_targets.DEFAULT_M)),
                   "lambda": float(right.number_input("OWL lambda (max deviation)",
                                                      value=owl_targets.DEFAULT_LAMBDA,
                                                      step=0.01, format="%.3f"))}
    params = params_inputs(REGISTRY[method].Params, key=f"prune-{method}")

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
    samples = field_input(PruneSpec, "samples", key="prune-samples", container=left)
    seqlen = field_input(PruneSpec, "seqlen", key="prune-seqlen", container=mid)
    seed = field_input(PruneSpec, "seed", key="prune-seed", container=right)

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
ppl_seqlen = field_input(PruneSpec, "ppl_seqlen", key="prune-ppl-seqlen", container=left)
max_windows = field_input(PruneSpec, "max_windows", key="prune-windows", container=mid)
batch_size = field_input(PruneSpec, "batch_size", key="prune-batch", container=right)

st.subheader("Zero-shot evaluation (lm-evaluation-harness)")
offline_tasks = list(zeroshot.OFFLINE_TASKS)
task_choices = [*offline_tasks, *zeroshot.DEFAULT_TASKS]
picked = st.multiselect(
    "Zero-shot tasks", task_choices, default=list(zeroshot.QUICK_TASKS),
    format_func=lambda task: run_views.task_choice_label(task, tuple(offline_tasks)),
    help=f"{', '.join(offline_tasks)} ship with the app (offline); "
         f"{', '.join(zeroshot.DEFAULT_TASKS)} are seed 000's set and download their data "
         "from the Hugging Face hub. The time is the offline model's on a 2-core CPU (a "
         "bigger model takes longer, a GPU less); the dense baseline runs the same tasks.")
other_tasks = st.text_input("Other lm-eval task names (comma separated)", "",
                            placeholder="e.g. winogrande, arc_challenge",
                            help="Any task lm-eval knows; checked before the run is queued.")
zero_shot_tasks = list(dict.fromkeys(
    [*picked, *(t.strip() for t in other_tasks.split(",") if t.strip())]))
num_fewshot, zs_limit = 0, None
if zero_shot_tasks:
    left, right = st.columns(2)
    num_fewshot = field_input(PruneSpec, "num_fewshot", key="prune-fewshot", container=left)
    zs_limit = field_input(PruneSpec, "zs_limit", key="prune-zs-limit", container=right)

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
run_meta = meta_inputs("prune", problems)

if st.button("Queue run", type="primary", icon=":material/rocket_launch:"):
    checking = st.status("Checking the run: the model's config, the text files, the zero-shot "
                         "tasks and the memory plan…")
    spec, spec_problems = check(PruneSpec, dict(
        model=run_views.local_path(model), method=method, sparsity=sparsity.strip(),
        method_params=params, calibration=calibration, samples=samples, seqlen=seqlen,
        seed=seed, block_range=block_range, owl=owl, ppl_datasets=ppl_datasets,
        ppl_seqlen=ppl_seqlen, zero_shot_tasks=zero_shot_tasks, num_fewshot=num_fewshot,
        zs_limit=zs_limit, max_windows=max_windows, batch_size=batch_size, dtype=dtype,
        device=device.strip(), trust_remote_code=trust,
        save_dir=run_views.local_path(save_dir) or None))
    problems = run_views.merge_problems(problems, spec_problems)
    if grid and not problems:
        problems = sweep.validate_grid(spec, grid)
    if problems:
        checking.update(label="Checked: not queued", state="error")
        st.error("Nothing was queued. Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
    else:
        checking.update(label="Checked; queueing…")
        queued = queue(spec, grid, fresh, run_meta)
        checking.update(label="Checked and queued" if queued else "Checked: not queued",
                        state="complete" if queued else "error")

st.caption(f"Results are stored in `{config.db_path()}`.")
