"""Activation sparsity: the CoreInfer parameter search and the best / AVG configurations
(no Streamlit here)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from core.present import tables as T
from core.present.charts.base import (
    _LAYOUT,
    _trace,
    empty_figure,
    hover_text,
)


def search_chart(trials: pd.DataFrame, finals: T.Table | None = None,
                 goal: float | None = None) -> go.Figure:
    """Search configurations: actual sparsity against the task metric (scored on the search's n
    samples), with CoreInfer's full-dataset score as a line and the best/AVG full-dataset scores
    as stars."""
    if trials.empty:
        return empty_figure("No search trials for this selection.")
    metric = T.metric_label(trials["metric"].iloc[0])
    ok = trials[trials["value"].notna()]
    counts = {int(n) for n in trials.get("n_samples", pd.Series(dtype=float)).dropna()}
    scored_on = f"{counts.pop()} samples" if len(counts) == 1 else "search samples"
    fig = go.Figure(go.Scatter(
        x=ok["actual_sparsity"], y=ok["value"], mode="markers",
        name=f"configuration ({scored_on})",
        marker={"size": 10, "color": "#1f77b4", "line": {"width": 1, "color": "#ffffff"}},
        hovertext=[hover_text(r["run_id"], r["source_label"], r["spec"],
                              f"params {T.params_label(r['params']) or r['label'] or r['trial']}",
                              f"actual sparsity {r['actual_sparsity']}, {metric} {r['value']}")
                   for r in ok.to_dict("records")], hoverinfo="text"))
    if finals is not None and not finals.empty:
        _add_finals(fig, finals.frame, goal)
    if goal is not None and not math.isnan(float(goal)):
        fig.add_vline(x=float(goal), line_dash="dot", line_color="#999999",
                      annotation_text=f"goal {goal}", annotation_position="top")
    fig.update_layout(**_LAYOUT, title=f"Search: actual sparsity vs {metric}")
    fig.update_xaxes(title="Actual sparsity")
    fig.update_yaxes(title=metric)
    return fig


def _add_finals(fig: go.Figure, finals: pd.DataFrame, goal: float | None) -> None:
    ok = finals[finals["Score"].notna()]
    for rec in ok.to_dict("records"):
        if rec["_config"] == "coreinfer":
            fig.add_hline(y=rec["Score"], line_dash="dash", line_color="#ff7f0e",
                          annotation_text=f"CoreInfer {T.format_value(rec['Score'], 'score')} "
                                          "(full dataset)",
                          annotation_position="top left")
    others = ok[ok["_config"] != "coreinfer"]
    if others.empty:
        return
    x = [a if not pd.isna(a) else goal for a in others["Actual sparsity"]]
    fig.add_trace(_trace("scatter",
        x=x, y=others["Score"], mode="markers+text", name="best / AVG (full dataset)",
        text=others["Config"], textposition="middle right",
        marker={"symbol": "star", "size": 15, "color": "#17becf",
                "line": {"width": 1, "color": "#333333"}},
        hovertext=[f"{T.run_reference(r['Run'], r.get('Source'))}<br>{r['Config']}: "
                   f"{T.format_value(r['Score'], 'score')}"
                   f" ({T.format_value(r['% of CoreInfer'], 'percent')} of CoreInfer)"
                   for r in others.to_dict("records")], hoverinfo="text"))


def percent_of_coreinfer_chart(summary: T.Table) -> go.Figure:
    """Best and AVG configurations as % of CoreInfer's score, one row per task (100% = parity)."""
    frame = summary.frame
    if summary.empty or frame[["Best %", "AVG %"]].isna().all().all():
        return empty_figure("No CoreInfer comparison to plot.")
    labels = [f"{m} · {t} · goal {T.format_value(g, 'score')}"
              + (f" · {T.run_reference(int(s))}" if s is not None and not pd.isna(s) else "")
              for m, t, g, s in
              zip(frame["Model"], frame["Task"], frame["Goal"],
                  frame.get("_search", pd.Series([None] * len(frame))), strict=True)]
    fig = go.Figure()
    for column, color in (("AVG %", "#17becf"), ("Best %", "#1f77b4")):
        fig.add_trace(_trace("bar", y=labels, x=frame[column], name=column.replace(" %", ""),
                             orientation="h", marker_color=color,
                             text=[T.format_value(v, "percent") for v in frame[column]],
                             textposition="outside", cliponaxis=False))
    missing = [(label, name) for name in ("Best", "AVG")
               for label, text in zip(labels, summary.text(name), strict=True)
               if text == T.NO_VALUE]
    if missing:
        fig.add_trace(_trace("scatter",
            y=[m[0] for m in missing], x=[2] * len(missing), mode="text", showlegend=False,
            text=[f"{name}: no value" for _, name in missing], textposition="middle right",
            textfont={"color": "#b00020"}, hoverinfo="skip"))
    fig.add_vline(x=100, line_dash="dash", line_color="#ff7f0e",
                  annotation_text="CoreInfer = 100%", annotation_position="top")
    top = float(frame[["Best %", "AVG %"]].max().max())
    fig.update_layout(**{**_LAYOUT, "height": 140 + 44 * len(frame),
                         "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0,
                                    "traceorder": "reversed"},
                         "margin": {"l": 20, "r": 40, "t": 90, "b": 50}},
                      barmode="group",
                      title="Sparsity levels as % of CoreInfer's full-dataset score")
    fig.update_xaxes(title="% of CoreInfer", ticksuffix="%", range=[0, top * 1.15])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


