"""Launch: queue a run (prune + perplexity) for the background worker."""

from __future__ import annotations

import streamlit as st

from core import config, data, jobs, run_views, tables
from core.executor import LocalExecutor
from core.methods import REGISTRY, available
from core.spec import DTYPE_CHOICES, LIMITS, PruneSpec
from core.store import StoreError

LOCAL_FILE = "a local .txt file…"

st.title("Launch a run")
st.caption("Prune a causal LM (or keep it dense) and measure its perplexity. The run is queued and "
           "executed by a background worker; follow it on the Runs page.")
try:
    store = tables.session_store(st.session_state)
except StoreError as exc:
    st.error(str(exc))
    st.stop()
if not store.writable:
    st.error("The results database is read-only here: runs cannot be launched. Set "
             "SPARSEBENCH_DB to a writable file and restart.")
    st.stop()

defaults = PruneSpec()
methods = ["dense", *available()]
method = st.selectbox(
    "Method", methods, index=methods.index(defaults.method),
    format_func=lambda m: f"{tables.method_label(m)} — " + (
        REGISTRY[m].description if m in REGISTRY else "no pruning (baseline)"),
)
sources = data.known_sources()


def text_source(label: str, key: str, default: str, help_text: str) -> str:
    """A known text source, or the path of a local .txt file."""
    options = [*sources, LOCAL_FILE]
    choice = st.selectbox(label, options, index=options.index(default), key=key, help=help_text)
    if choice == LOCAL_FILE:
        return st.text_input(f"{label}: file path", key=f"{key}-path",
                             placeholder="/path/to/text.txt")
    return choice


with st.form("launch"):
    st.subheader("Model")
    model = st.text_input("Model", defaults.model,
                          help="'smollm2-135m' is the offline default (installed with the app). "
                               "Or a local folder with a transformers model, or a hub id such as "
                               "meta-llama/Llama-2-7b-hf (needs network access).")
    left, mid, right = st.columns(3)
    dtype = left.selectbox("Weights dtype", DTYPE_CHOICES)
    device = mid.text_input("Device", defaults.device, help="cpu, cuda, cuda:1, mps")
    trust = right.checkbox("Trust remote code", False,
                           help="Runs Python code shipped with the model. Off unless you trust "
                                "the model's authors.")

    params: dict[str, object] = {}
    needs_calibration = method in REGISTRY and REGISTRY[method].needs_calibration
    if method != "dense":
        st.subheader("Pruning")
        sparsity = st.text_input("Sparsity", defaults.sparsity,
                                 help="Fraction of weights pruned: 0.5 or 50%; or N:M such as "
                                      "2:4 (N pruned in every M consecutive inputs).")
        for name, default in run_views.method_parameters(method).items():
            label = f"{tables.method_label(method)}: {name}"
            if isinstance(default, bool):
                params[name] = st.checkbox(label, default)
            elif isinstance(default, int):
                params[name] = int(st.number_input(label, value=default, step=1))
            else:
                params[name] = float(st.number_input(label, value=float(default),
                                                     format="%.4f"))
        block_text = st.text_input("Block range (optional)", "",
                                   help="start,end: prune blocks start..end-1 only; empty = all.")
    else:
        sparsity, block_text = "0", ""

    if needs_calibration:
        st.subheader("Calibration")
        calibration = text_source("Calibration text", "calibration", defaults.calibration,
                                  "Where the calibration windows come from.")
        left, mid, right = st.columns(3)
        samples = int(left.number_input("Samples", *LIMITS["samples"], value=defaults.samples))
        seqlen = int(mid.number_input("Tokens per sample", *LIMITS["seqlen"],
                                      value=defaults.seqlen))
        seed = int(right.number_input("Seed", 0, 2**31 - 1, value=defaults.seed))
    else:
        calibration, samples, seqlen, seed = defaults.calibration, defaults.samples, \
            defaults.seqlen, defaults.seed

    st.subheader("Perplexity evaluation")
    ppl_datasets = st.multiselect("Datasets", sources, default=defaults.ppl_datasets,
                                  help="wikitext2, ptb and c4 load from the Hugging Face hub.")
    extra = st.text_input("Also evaluate on local .txt files (comma separated)", "")
    left, mid, right = st.columns(3)
    ppl_seqlen = int(left.number_input("Window length", *LIMITS["seqlen"],
                                       value=defaults.ppl_seqlen))
    max_windows = int(mid.number_input("Max windows (0 = all)", 0, LIMITS["max_windows"][1],
                                       value=defaults.max_windows or 0))
    batch_size = int(right.number_input("Batch size", *LIMITS["batch_size"],
                                        value=defaults.batch_size))
    save_dir = st.text_input("Save the pruned model to (optional folder)", "")
    fresh = st.checkbox("Run again even if an identical run is stored", False)
    submitted = st.form_submit_button("Queue run", type="primary")

if submitted:
    problems: list[str] = []
    block_range = None
    if block_text.strip():
        try:
            block_range = [int(x) for x in block_text.replace(" ", "").split(",")]
        except ValueError:
            problems.append("Block range: write two whole numbers like 0,15.")
    spec = PruneSpec(
        model=model.strip(), method=method, sparsity=sparsity.strip(), method_params=params,
        calibration=(calibration or "").strip(), samples=samples, seqlen=seqlen, seed=seed,
        block_range=block_range,
        ppl_datasets=[*ppl_datasets, *(p.strip() for p in extra.split(",") if p.strip())],
        ppl_seqlen=ppl_seqlen, max_windows=max_windows or None, batch_size=batch_size,
        dtype=dtype, device=device.strip(), trust_remote_code=trust,
        save_dir=save_dir.strip() or None,
    )
    problems += spec.validate()
    if problems:
        st.error("Nothing was queued. Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
    else:
        try:
            submission = jobs.submit(store, spec, fresh=fresh)
            LocalExecutor(store).ensure_workers()
        except StoreError as exc:
            st.error(str(exc))
        else:
            if submission.reused:
                st.info(f"An identical run is already stored (run {submission.run_id}); its "
                        "results are reused. Tick 'Run again' for a fresh run.")
            else:
                st.success(f"Queued run {submission.run_id}.")
            if submission.baseline_id is not None:
                st.caption(f"Dense baseline for change-from-dense: run {submission.baseline_id}.")
            st.page_link("pages/runs.py", label="Follow it on the Runs page",
                         icon=":material/play_circle:")

st.caption(f"Results are stored in `{config.db_path()}`.")
