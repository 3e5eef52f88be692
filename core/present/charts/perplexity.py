"""Perplexity against sparsity: one line per method and source, dense as a dashed level
(no Streamlit here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.analysis import noise
from core.present import tables as T
from core.present.charts.base import (
    _LAYOUT,
    NM_SYMBOLS,
    PUBLISHED_OPACITY,
    _trace,
    empty_figure,
    hover_text,
    method_color,
    readable_log_y,
    short_source,
)


def perplexity_chart(rows: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Perplexity against sparsity, one line per method and group; dense as a dashed level."""
    ppl = rows[rows["kind"] == "perplexity"] if not rows.empty else rows
    if ppl.empty:
        return empty_figure("No perplexity to plot for this selection.")
    ok = ppl[(ppl["status"] == "ok") & ppl["value"].notna()]
    several = ppl[["model", "dataset"]].drop_duplicates().shape[0] > 1
    fig = go.Figure()
    for key, part in _trace_groups(ppl[~ppl["dense"]]):
        ok_part = part[part["status"] == "ok"]
        if key[-1] != MANY_SETTINGS:
            _add_ppl_trace(fig, ok_part, key, several)
            continue
        latest = T.latest_runs(ok_part.assign(_x=_x_of(ok_part)), ["_x"])
        _add_ppl_trace(fig, latest, key, several)
        line = fig.data[-1] if len(latest) else None
        _add_other_runs(fig, ok_part.drop(index=latest.index), line)
    right = max([*_x_of(ppl), 10.0])
    _add_dense_levels(fig, ppl[ppl["dense"] & (ppl["status"] == "ok")], several, right)
    top = float(ok["value"].max()) * 2 if not ok.empty else 10.0
    _add_diverged(fig, ppl[ppl["status"] == "diverged"], top)
    _add_collapsed(fig, ppl[ppl["status"] == "collapsed"], top)
    fig.update_layout(**_LAYOUT, title=title or "Perplexity vs sparsity (lower is better)")
    readable_log_y(fig, "Perplexity (log scale)")
    fig.update_xaxes(title="Sparsity (% of weights pruned)", ticksuffix="%",
                     range=[-2, right * 1.15])
    return fig


#: Lines a chart draws per method and structure for runs that differ in their settings; with
#: more, the line goes through the latest run at each sparsity and the others are markers.
MAX_SETTING_LINES = 6
MANY_SETTINGS = "\0many settings"  # the settings part of a trace key for the case above


def _trace_groups(rows: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """Rows of one line: model, dataset, group, method and structure (unstructured or one N:M),
    and variant (an own run's label words, else its settings: one line each, up to
    ``MAX_SETTING_LINES``; beyond, one key ``MANY_SETTINGS`` for all)."""
    if rows.empty:
        return []
    variants = rows["variant"] if "variant" in rows else [None] * len(rows)
    keyed = rows.assign(
        _structure=T.per_value(lambda p: p if T.is_nm(p) else "", rows["pattern"]),
        _line=[f"variant: {v}" if isinstance(v, str) else f"settings: {s}"
               for v, s in zip(variants, rows["settings"], strict=True)])
    keys = ["model", "dataset", "group", "method", "_structure", "origin"]
    out: list[tuple[tuple, pd.DataFrame]] = []
    for key, part in keyed.groupby(keys, sort=False):
        if part["_line"].nunique() > MAX_SETTING_LINES:
            out.append(((*key, MANY_SETTINGS), part))
        else:
            out += [((*key, line), lines) for line, lines in part.groupby("_line", sort=False)]
    return out


def _x_of(part: pd.DataFrame) -> list[float]:
    """Each row's share of pruned weights in % (the x of the perplexity chart)."""
    return [T.sparsity_fraction(s, p) * 100 for s, p in
            zip(part["sparsity"], part["pattern"], strict=True)]


def _add_other_runs(fig: go.Figure, part: pd.DataFrame, line: Any) -> None:
    """Runs of a line's method that its line does not go through, as faint markers."""
    if part.empty or line is None:
        return
    fig.add_trace(_trace("scatter",
        x=_x_of(part), y=part["value"], mode="markers", name=f"{line.name}: other runs",
        legendgroup=line.legendgroup, showlegend=False, opacity=0.35,
        marker={"symbol": line.marker.symbol, "size": 7, "color": line.marker.color},
        hovertext=_ppl_hover(part, with_spec=False), hoverinfo="text"))


def _add_ppl_trace(fig: go.Figure, part: pd.DataFrame, key: tuple, several: bool) -> None:
    if part.empty:
        return
    model, dataset, group, method, structure, origin, _settings = key
    part = part.assign(_x=_x_of(part)).sort_values("_x")
    published = origin == "published"
    name = T.method_label(method) + (f" {structure}" if structure else "")
    variant = str(key[-1]).removeprefix("variant: ") if str(key[-1]).startswith("variant: ") \
        else ""
    name += f" · {variant}" if variant else ""
    name += f" · {short_source(group) if published else 'own'}"
    if several:
        name += f" · {model} {T.dataset_label(dataset)}"
    symbol = NM_SYMBOLS.get(structure, "triangle-up") if structure else "circle"
    # Published lines are labelled with their source at their last point; single published
    # points are told apart by their open marker and named in the legend and hover.
    label = short_source(group) if published and len(part) > 1 else ""
    if key[-1] == MANY_SETTINGS:
        name += " (latest run at each sparsity)"
    # Runs that differ only in settings (an ablation) share one legend entry.
    shown = {t.legendgroup for t in fig.data}
    fig.add_trace(_trace("scatter",
        x=part["_x"], y=part["value"], name=name, legendgroup=name,
        showlegend=name not in shown,
        mode="lines+markers+text" if label else "lines+markers",
        text=[""] * (len(part) - 1) + [label],
        textposition="middle right", textfont={"size": 10, "color": method_color(method)},
        line={"color": method_color(method),
              "dash": "dot" if published else "dash" if variant else "solid"},
        marker={"symbol": symbol + ("-open" if published else ""), "size": 11 if published else 9,
                "color": method_color(method), "line": {"width": 2}},
        opacity=PUBLISHED_OPACITY if published else 1.0,
        hovertext=_ppl_hover(part), hoverinfo="text", error_y=_ppl_error_bars(part),
    ))


def _ppl_error_bars(part: pd.DataFrame) -> dict[str, Any] | None:
    """Error bars of the perplexities' 95% intervals (from the stored windows; none where
    no row has them)."""
    if "nlls" not in part:
        return None
    low, high = noise.ppl_intervals(part["nlls"].to_numpy(dtype=object))
    if np.isnan(low).all():
        return None
    value = part["value"].to_numpy(dtype=float)
    return {"type": "data", "symmetric": False, "array": np.nan_to_num(high - value),
            "arrayminus": np.nan_to_num(value - low), "thickness": 1.2, "width": 3}


def _ppl_hover(part: pd.DataFrame, with_spec: bool = True) -> list[str]:
    """Each point's hover; ``with_spec=False`` (the faint markers of a method's many other
    runs, thousands at 10,000 runs): without the spec summary, which the label words and the
    run's details give (a megabyte of chart otherwise)."""
    labels = T.run_labels(part)
    specs = part["spec"] if with_spec else [None] * len(part)
    return [hover_text(run, source, spec, f"{label} on {dataset}: PPL "
                                          f"{T.format_value(value, 'ppl')}")
            for run, source, spec, label, dataset, value in zip(
                part["run_id"], part["source_label"], specs, labels, part["dataset"],
                part["value"], strict=True)]


def _add_dense_levels(fig: go.Figure, dense: pd.DataFrame, several: bool, right: float) -> None:
    """Each dense baseline as a dashed horizontal level across the plot (dotted when
    published, as published lines are), its 95% interval as a grey band behind it, labelled
    at its left end, where no pruned run sits (a label at the right end ran into the runs'
    error bars).

    (A trace rather than ``add_hline``: hline annotations land at 10**y on a log axis.)
    """
    levels = T.latest_runs(dense, ["model", "dataset", "group"])
    if levels.empty:
        return
    low, high = (noise.ppl_intervals(levels["nlls"].to_numpy(dtype=object)) if "nlls" in levels
                 else (np.full(len(levels), np.nan),) * 2)
    for rec, lo, hi in zip(levels.to_dict("records"), low, high, strict=True):
        published = rec["origin"] == "published"
        label = f"Dense {rec['value']:.2f} · {short_source(rec['group']) if published else 'own'}"
        if several:
            label += f" · {rec['model']} {T.dataset_label(rec['dataset'])}"
        interval = (f" (95% interval {lo:.2f} to {hi:.2f})"
                    if math.isfinite(lo) and math.isfinite(hi) else "")
        hover = hover_text(rec["run_id"], rec["source_label"], rec["spec"],
                           f"Dense on {rec['dataset']}: PPL {rec['value']:.2f}{interval}")
        if interval:
            fig.add_trace(_trace("scatter",
                x=[0, right, right, 0, 0], y=[lo, lo, hi, hi, lo], mode="lines", fill="toself",
                fillcolor="rgba(85, 85, 85, 0.10)", line={"width": 0}, legendgroup=label,
                showlegend=False, name=f"{label}: 95% interval", hoverinfo="skip"))
        fig.add_trace(_trace("scatter",
            x=[0, right], y=[rec["value"]] * 2, name=label, legendgroup=label,
            mode="lines+text" if len(levels) == 1 else "lines",
            text=[label, ""], textposition="top right", textfont={"size": 10},
            line={"color": "#555555", "width": 1.5, "dash": "dot" if published else "dash"},
            hovertext=[hover, hover], hoverinfo="text"))


#: The legend entry of the runs whose perplexity is at or above the vocabulary size.
COLLAPSED_NAME = "collapsed (PPL ≥ vocabulary size)"


def _add_diverged(fig: go.Figure, diverged: pd.DataFrame, top: float) -> None:
    if diverged.empty:
        return
    fig.add_trace(_trace("scatter",
        x=_x_of(diverged), y=[top] * len(diverged), mode="markers+text",
        name="diverged (no finite PPL)",
        text=[f"{T.method_label(m)}: diverged" for m in diverged["method"]],
        textposition="bottom center", textfont={"size": 10, "color": "#b00020"},
        marker={"symbol": "x", "size": 12, "color": "#b00020"},
        hovertext=[hover_text(r["run_id"], r["source_label"], r["spec"],
                              f"{T.record_label(r)}: diverged (no finite perplexity)")
                   for r in diverged.to_dict("records")],
        hoverinfo="text"))


def _add_collapsed(fig: go.Figure, collapsed: pd.DataFrame, top: float) -> None:
    """Runs whose perplexity is at or above the vocabulary size, as markers at the top of the
    chart (their stored value only in the hover text: it is no point on the axis)."""
    if collapsed.empty:
        return
    fig.add_trace(_trace("scatter",
        x=_x_of(collapsed), y=[top] * len(collapsed), mode="markers+text",
        name=COLLAPSED_NAME,
        text=[f"{T.method_label(m)}: {T.COLLAPSED}" for m in collapsed["method"]],
        textposition="top center", textfont={"size": 10, "color": "#7a4a00"},
        marker={"symbol": "triangle-up-open", "size": 12, "color": "#7a4a00",
                "line": {"width": 2}},
        hovertext=[hover_text(r["run_id"], r["source_label"], r["spec"],
                              f"{T.record_label(r)} on {r['dataset']}: {T.COLLAPSED} (stored PPL "
                              f"{_stored(r['value'])}, at or above the vocabulary size)")
                   for r in collapsed.to_dict("records")],
        hoverinfo="text"))


def _stored(value: Any) -> str:
    """A stored perplexity for hover text: '6,960,449.00', or 'none'."""
    return f"{float(value):,.2f}" if value is not None and not pd.isna(value) else "none"


