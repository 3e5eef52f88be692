"""Report: seed 000's layout (perplexity, zero-shot, key findings, per-task breakdown) and seed
002's layer statistics for one model and one source, downloadable as Markdown."""

from __future__ import annotations

import streamlit as st

from core.present import report, tables
from ui.components import memo, show_table, store_or_stop, use_app_menu

use_app_menu()
st.title("Report")
st.caption("A report for one model from its runs: your own runs, or one published source. Every "
           "number is computed from the stored per-run values and every finding from a stated "
           "formula; a finding whose data is missing is left out.")
with store_or_stop():
    store = tables.session_store(st.session_state)
    subjects = memo(store, "report.subjects")(
        lambda: report.stored_subjects(store))
if not subjects:
    st.info("No results to report yet. Launch a pruning run, or check that "
            "core/store/published/figures.csv is present: published figures are imported at start.")
    st.stop()


def show_blocks(blocks: list[report.Block], key: tuple, stats: object) -> None:
    """Draw report blocks (headings, text, lists, tables) and the charts beside them; ``key``:
    (model, group, metric, evaluation), ``stats``: the layer rows a layer chart needs."""
    for block in blocks:
        charts: list[str] = []
        if block.kind == "heading":
            if block.level == 1:
                st.header(block.text)
            elif block.level == 2:
                st.subheader(block.text)
            else:
                st.markdown(f"#### {block.text}")
        elif block.kind == "text":
            st.markdown(block.text)
        elif block.kind == "bullets":
            st.markdown("\n".join(f"- {line}" for line in block.lines))
        elif block.kind == "table" and block.table is not None:
            show_table(block.table, block.name, whole=True)
            charts = [block.chart] if block.chart else []
        elif block.kind == "charts":
            names = [label for label, _ in block.choices]
            picked = st.selectbox(block.text, names, key=block.name)
            charts = [dict(block.choices)[picked]]
        for chart in charts:
            figures = memo(store, "report.figures", chart, *key)(
                lambda chart=chart: report.chart_figures(chart, ppl, zs, stats, *key))
            for figure in figures:
                st.plotly_chart(figure)


labels = [report.subject_label(m, g) for m, g in subjects]
with st.sidebar:
    metric = st.radio("Zero-shot metric", ["acc", "acc_norm"], format_func=tables.metric_label,
                      help="Tasks without this metric fall back to the other one.")
left, right = st.columns(2)
choice = left.selectbox("Model and source", labels,
                        help="Your own runs first, then each published source.")
model, group = subjects[labels.index(choice)]
with store_or_stop():  # the chosen model's rows only (the charts overlay its other sources)
    ppl = memo(store, "metrics", "perplexity", model)(
        lambda: tables.load_metrics(store, "perplexity", model=model))
    zs = memo(store, "metrics", "zero_shot", model)(
        lambda: tables.load_metrics(store, "zero_shot", model=model))
    # One row per run with layer statistics; their rows are read for the shown runs only.
    layer_runs = memo(store, "layer_runs", model)(lambda: tables.load_layer_runs(store, model))
evaluation = report.default_evaluation(zs, model, group)
if evaluation is not None:
    evaluations = tables.zs_evaluations(zs[zs["group"] == tables.OWN_GROUP], model)
    evaluation = right.selectbox(
        "Zero-shot evaluation of your runs", evaluations, disabled=len(evaluations) < 2,
        help="Own runs are reported, and compared with dense, within one setting of few-shot "
             "count, example limit and dtype.")
# The layer rows of the runs the report shows (the latest run of each method and sparsity),
# read when the Layer statistics section or the download asks for them.
shown_runs = memo(store, "report.layer_runs", model, group)(lambda: report.layer_report_runs(
    layer_runs[(layer_runs["model"] == model) & (layer_runs["group"] == group)]))
shown_ids = [int(i) for i in shown_runs["run_id"]]


def whole_markdown() -> str:
    """The whole report, written when the download is clicked (on a thread of its own)."""
    stats = tables.load_layer_stats(store, shown_ids)
    return report.build(ppl, zs, stats, model, group, metric, evaluation).markdown()


key = (model, group, metric, evaluation)
sections = memo(store, "report.sections", *key)(
    lambda: report.available_sections(ppl, zs, layer_runs, *key))
if not sections:
    st.info(f"No tables to report for {choice}.")
    st.stop()
intro = memo(store, "report.build", *key, "intro")(
    lambda: report.build(ppl, zs, None, *key, sections=()))
show_blocks(intro.section(""), key, None)
st.download_button("Download the report (Markdown)", whole_markdown,  # written on click
                   file_name=f"report-{report.slug(model)}.md", mime="text/markdown",
                   key="report-markdown", on_click="ignore", icon=":material/download:",
                   type="primary")
# One section at a time (a report of thousands of runs is long); ``?section=`` links to one.
for tab, section in zip(st.tabs(sections, key="section", on_change="rerun",
                                bind="query-params"), sections, strict=True):
    with tab:
        if not tab.open:
            continue
        stats = None
        if section == "Layer statistics":
            with store_or_stop():
                stats = memo(store, "layer_stats", model, group)(
                    lambda: tables.load_layer_stats(store, shown_ids))
        built = memo(store, "report.build", *key, section)(
            lambda section=section, stats=stats: report.build(ppl, zs, stats, *key,
                                                              sections=[section]))
        blocks = built.section(section)
        if not report.has_results(blocks):
            st.info(f"No {section.lower()} to report for {choice}.")
        show_blocks(blocks, key, stats)
