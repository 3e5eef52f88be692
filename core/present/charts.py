"""Plotly figures for the dashboard (no Streamlit here).

Own runs are drawn with filled markers and solid lines; published figures with open markers,
dotted lines and a text label naming their source.  Hover text shows run id, source and spec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.analysis import noise
from core.present import tables as T

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
METHOD_COLORS = {"dense": "#444444", "magnitude": "#d62728", "wanda": "#1f77b4",
                 "sparsegpt": "#2ca02c", "sparsellm": "#9467bd", "coreinfer": "#ff7f0e",
                 "sparsity-levels": "#17becf"}
PUBLISHED_OPACITY = 0.85
NM_SYMBOLS = {"2:4": "square", "4:8": "diamond", "1:4": "triangle-down", "3:4": "triangle-up"}


def _white_template() -> go.layout.Template:
    """Plotly's 'plotly_white' template with the trace defaults of the trace types drawn here
    only: the named template carries defaults for all 24 types, and each figure validated
    every one of them (a server's first figure took 35 ms instead of 10, each later one 9 ms
    instead of 6).  The look is the same."""
    text = (resources.files("plotly") / "package_data" / "templates" / "plotly_white.json")
    template = json.loads(text.read_text(encoding="utf-8"))
    return go.layout.Template({"layout": template["layout"], "data": {
        k: template["data"][k] for k in ("scatter", "bar", "heatmap", "parcoords")}})


_LAYOUT = {"template": _white_template(), "height": 480,
           "margin": {"l": 60, "r": 30, "t": 60, "b": 60},
           "legend": {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
           "hoverlabel": {"align": "left"}}


def method_color(method: str, index: int = 0) -> str:
    """A stable colour per method (unknown methods take a palette colour)."""
    return METHOD_COLORS.get(method, PALETTE[index % len(PALETTE)])


def short_source(source: str) -> str:
    """'Wanda README (Sun et al. 2023)' -> 'Wanda README'."""
    return source.split(" (")[0] if source else "own run"


def hover_text(run_id: Any, source: str, spec: Mapping[str, Any] | str | None,
               *extra: str) -> str:
    """Hover lines: an own run's id and 'source: own run', or a published figure's source and
    table (never its internal id); a summary of the spec (None: none), plus any extra
    lines."""
    table = spec.get("table") if isinstance(spec, Mapping) else None
    where = T.run_reference(run_id, source, table)
    lines = ([where, "source: own run"] if where.startswith("run ") or not source
             else [f"source: {where}"])
    lines += extra
    spec_line = [] if spec is None else [_spec_line(spec)]
    return "<br>".join([*(_wrap(line) for line in lines if line), *spec_line])


def _spec_line(spec: Mapping[str, Any] | str) -> str:
    """'spec: ...' wrapped (a run's points share one line, worked out once per spec dict)."""
    if isinstance(spec, str):
        return _wrap(f"spec: {spec}")
    return _shared_spec_line(spec)


@T.by_identity
def _shared_spec_line(spec: Mapping[str, Any]) -> str:
    return _wrap(f"spec: {T.spec_summary(spec)}")


def _wrap(text: str, width: int = 70) -> str:
    if len(text) <= width:  # most hover lines: nothing to wrap
        return text
    words, out, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "<br>".join(out)


def _trace(kind: str, **props: Any) -> dict[str, Any]:
    """A trace as a dict for ``Figure.add_trace``, which validates it once (a ``go.Scatter``
    is validated when built and again when added)."""
    return {"type": kind, **props}


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 15})
    fig.update_layout(**{**_LAYOUT, "height": 260}, xaxis_visible=False, yaxis_visible=False)
    return fig


# -- perplexity ----------------------------------------------------------------------------------
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


#: Tick mantissas per decade, coarse to fine: the first that gives ``MIN_TICKS`` ticks is used.
LOG_MANTISSAS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
MIN_TICKS = 3
MAX_TICKS = 12
#: Room above and below the outermost point or error bar end, in decades (6%: an error bar's
#: cap at the plot's edge read as clipped).
LOG_PAD = 0.025


def readable_log_y(fig: go.Figure, title: str) -> None:
    """A log y axis over every point drawn (error bars included) with ``log_ticks`` labels,
    its range widened to the outer ticks so that at least ``MIN_TICKS`` of them show."""
    values = [v for trace in fig.data if trace.yaxis in (None, "y") for v in _y_extent(trace)]
    values = [v for v in values if math.isfinite(v) and v > 0] or [1.0, 10.0]
    low, high = min(values), max(values)
    ticks = log_ticks(low, high)
    bottom, top = min(low, ticks[0]), max(high, ticks[-1])
    fig.layout.yaxis.update(  # the perplexity axis alone (a strip's yaxis2 keeps its own)
        type="log", title=title, tickvals=ticks, ticktext=[f"{t:g}" for t in ticks],
        range=[math.log10(bottom) - LOG_PAD, math.log10(top) + LOG_PAD])


def _y_extent(trace: Any) -> list[float]:
    """A trace's y values and the ends of its error bars (read from its JSON: plotly's
    property objects cost a millisecond a trace)."""
    props = trace.to_plotly_json()
    ys = [float(y) for y in (props.get("y") if props.get("y") is not None else ())
          if _number(y)]
    error = props.get("error_y") or {}
    if error.get("array") is None or not ys:
        return ys
    plus = [float(e) if _number(e) else 0.0 for e in error["array"]]
    minus = ([float(e) if _number(e) else 0.0 for e in error["arrayminus"]]
             if error.get("arrayminus") is not None else plus)
    return [*ys, *(y + p for y, p in zip(ys, plus, strict=False)),
            *(y - m for y, m in zip(ys, minus, strict=False))]


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and math.isfinite(value)


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values covering [low, high] on a log axis: 1-2-5 per decade, finer steps when the
    range is too narrow for three of those (16.7 to 33 gets 15, 20, 30, not a lone 20), powers
    of ten alone when 1-2-5 would give more than ``MAX_TICKS``."""
    low, high = max(low, 1e-9), max(high, low)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    inside: list[float] = []
    for mantissas in LOG_MANTISSAS:
        ticks = [round(m * 10.0 ** e, 12) for e in decades for m in mantissas]
        inside = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
        if len(inside) >= MIN_TICKS:
            break
    if len(inside) > MAX_TICKS:  # many decades: their powers of ten alone
        inside = [t for t in inside if math.log10(t).is_integer()]
    return inside or [low, high]


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


# -- zero-shot -----------------------------------------------------------------------------------
#: Bars a retention chart draws at most (one per run; the table lists every run).
MAX_BARS = 40


def retention_chart(table: T.Table) -> go.Figure:
    """Retention of dense accuracy, one horizontal bar per run; published bars are hatched."""
    frame = table.frame
    if table.empty or frame["Retention"].isna().all():
        return empty_figure("No retention to plot (a dense baseline is needed).")
    frame = frame[frame["Retention"].notna()]
    title = "Zero-shot retention (pruned average / dense average)"
    if len(frame) > MAX_BARS:
        total = len(frame)
        frame = frame.sort_values("Run", kind="stable").tail(MAX_BARS).sort_index()
        title += f": the {MAX_BARS} latest of {total:,} runs (all are in the table)"
    fig = go.Figure()
    for origin, part in frame.groupby("Origin", sort=False):
        published = origin == T.ORIGIN_NAMES["published"]
        fig.add_trace(_trace("bar",
            y=[_bar_label(r) for r in part.to_dict("records")], x=part["Retention"] * 100,
            orientation="h", name="Published (hatched)" if published else "Own runs",
            marker={"color": [method_color(m, i) for i, m in enumerate(part["_method"])],
                    "pattern": {"shape": "/" if published else ""},
                    "line": {"color": "#333333", "width": 1 if published else 0}},
            opacity=PUBLISHED_OPACITY if published else 1.0,
            text=[f"{v * 100:.1f}%" for v in part["Retention"]], textposition="outside",
            cliponaxis=False,
            hovertext=[hover_text(r["Run"], r["Source"], r["_spec"],
                                  f"average {T.format_value(r['Accuracy'], 'pct')}")
                       for r in part.to_dict("records")], hoverinfo="text"))
    fig.add_vline(x=100, line_dash="dot", line_color="#666666")
    top = max(100.0, float(frame["Retention"].max()) * 100)
    fig.update_layout(**{**_LAYOUT, "height": 140 + 30 * len(frame),
                         "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                         "margin": {"l": 20, "r": 40, "t": 90, "b": 50}},
                      title=title, showlegend=True)
    fig.update_xaxes(title="Retention of dense accuracy", ticksuffix="%", range=[0, top * 1.12])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def _bar_label(rec: Mapping[str, Any]) -> str:
    source = short_source(rec["Source"]) if rec["Origin"] == T.ORIGIN_NAMES["published"] else "own"
    return f"{rec['Model']} · {rec['Method']} · {source} #{rec['Run']}"


def per_task_chart(long: pd.DataFrame) -> go.Figure:
    """Accuracy per task, one bar group per task and one bar per method (and group), with the
    95% interval of each score from lm-eval's stderr as error bars; a failed or missing score is
    an empty bar labelled 'failed' / 'no value' (its note on hover)."""
    if long.empty:
        return empty_figure("No per-task scores for this selection.")
    fig = go.Figure()
    tasks = sorted(set(long["dataset"]), key=T.task_key)
    for i, (column, part) in enumerate(long.groupby("column", sort=False)):
        part = part.drop_duplicates("dataset", keep="last")
        published = (part["origin"] == "published").all()
        records = part.to_dict("records")
        first = records[0]
        records += [{**first, "dataset": t, "value": None, "status": "missing",
                     "note": f"run {first['run_id']} did not evaluate {t}"}
                    for t in tasks if t not in set(part["dataset"])]
        ok = [r["status"] == "ok" and not pd.isna(r["value"]) for r in records]
        half = [_half_width(r) if good else math.nan for r, good in zip(records, ok, strict=True)]
        fig.add_trace(_trace("bar",
            x=[r["dataset"] for r in records],
            y=[r["value"] * 100 if good else 0 for r, good in zip(records, ok, strict=True)],
            error_y={"type": "data", "array": half, "color": "#555", "thickness": 1,
                     "visible": any(math.isfinite(h) for h in half)},
            name=str(column),
            text=["" if good else T.zs_cell_text(r["status"], r["note"]) or T.NO_VALUE
                  for r, good in zip(records, ok, strict=True)],
            textposition="outside", textangle=-90, textfont={"color": "#b00020", "size": 11},
            cliponaxis=False,
            marker={"color": method_color(part["method"].iloc[0], i),
                    "pattern": {"shape": "/" if published else ""}},
            hovertext=[hover_text(r["run_id"], r["source_label"], r["spec"],
                                  f"{r['dataset']}: "
                                  + (f"{r['value'] * 100:.2f}%" if good else
                                     (r["note"] if isinstance(r["note"], str) and r["note"]
                                      else T.NO_VALUE))
                                  + (f" ± {h:.2f} (95%)" if math.isfinite(h) else ""))
                       for r, good, h in zip(records, ok, half, strict=True)],
            hoverinfo="text"))
    fig.update_layout(**_LAYOUT, title="Zero-shot accuracy per task", barmode="group")
    fig.update_xaxes(categoryorder="array", categoryarray=tasks)
    fig.update_yaxes(title="Accuracy", ticksuffix="%", rangemode="tozero")
    return fig


def _half_width(rec: Mapping[str, Any]) -> float:
    """Half the 95% interval of a score, in points, from lm-eval's stderr (NaN without one)."""
    return noise.Z95 * T.score_stderr(rec) * 100


def drop_chart(table: T.Table) -> go.Figure:
    """Heatmap of the drop from dense in points: rows = methods, columns = tasks and the average;
    red = worse than dense, blue = better; a drop within noise (its 95% interval holds 0) is
    drawn neutral (the scale's white middle) and marked '≈', its number kept in the text and
    hover; failed / missing cells are grey and labelled.  The scale spans the drops outside
    noise."""
    frame = table.frame
    if table.empty or frame["Drop (points)"].isna().all():
        return empty_figure("No drop from dense to plot (a dense baseline is needed).")
    tasks = list(dict.fromkeys(frame["Task"]))
    methods = list(dict.fromkeys(frame["Method"]))
    cells = {(r["Method"], r["Task"]): r for r in frame.to_dict("records")}
    z, text, hover = [], [], []
    shown = table.display().set_index(["Method", "Task"])
    for method in methods:
        z_row, text_row, hover_row = [], [], []
        for task in tasks:
            rec = cells.get((method, task))
            if rec is None:
                z_row.append(None)
                text_row.append("")
                hover_row.append(f"{method} · {task}: not in this selection")
                continue
            drop = rec["Drop (points)"]
            row = shown.loc[(method, task)]
            noisy = bool(rec.get("_noise"))  # its 95% interval holds 0
            z_row.append(None if pd.isna(drop) else 0.0 if noisy else float(drop))
            text_row.append((row["Drop (points)"] + ("≈" if noisy else "")) if not pd.isna(drop)
                            else (row["Score"] if row["Score"] in (T.FAILED, T.NO_VALUE)
                                  else row["Dense"] if row["Dense"] in (T.FAILED, T.NO_VALUE)
                                  else ""))
            interval = rec.get("95% interval (points)") or ""
            hover_row.append(_wrap(
                f"{method} · {task}: score {row['Score']}, dense {row['Dense']}, "
                f"drop {row['Drop (points)'] or '—'} points"
                + (f" (95% interval {interval})" if interval else "")
                + f", relative {row['Relative drop'] or '—'}"
                f"; {T.run_reference(rec['Run'], rec.get('Source'))}"
                + (f"; {rec['Note']}" if rec["Note"] else "")
                + (f"<br>spec: {rec['_spec']}" if rec.get("_spec") else "")))
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)
    beyond_noise = [abs(v) for row in z for v in row if v is not None]
    limit = max([1.0, *beyond_noise])
    fig = go.Figure(go.Heatmap(
        z=z, x=tasks, y=methods, text=text, texttemplate="%{text}", textfont={"size": 13},
        hovertext=hover, hoverinfo="text", colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit,
        xgap=2, ygap=2, colorbar={"title": {"text": "points"}, "ticksuffix": ""}))
    fig.update_layout(**{**_LAYOUT, "height": 170 + 48 * len(methods),
                         "plot_bgcolor": "#e6e6e6",
                         "margin": {"l": 20, "r": 30, "t": 60, "b": 50}},
                      title="Drop from dense in accuracy points (pruned − dense; red = worse, "
                            "white ≈ within noise)")
    fig.update_xaxes(side="bottom", showgrid=False)
    fig.update_yaxes(autorange="reversed", automargin=True, showgrid=False)
    return fig


# -- layer statistics ----------------------------------------------------------------------------
def block_sparsity_chart(table: T.Table, target: float | None = None,
                         title: str = "Measured sparsity by block") -> go.Figure:
    """Measured sparsity of each block as bars, with the target and the mean as lines."""
    frame = table.frame
    if table.empty or frame["Sparsity"].isna().all():
        return empty_figure("No per-block sparsity stored for this run.")
    values = frame["Sparsity"].astype(float) * 100
    fig = go.Figure(go.Bar(
        x=frame["Block"], y=values, name="measured sparsity", marker_color="#1f77b4",
        hovertext=[f"block {b}: {v:.3f}%<br>least pruned: {lo}<br>most pruned: {hi}"
                   for b, v, lo, hi in zip(frame["Block"], values, frame["Least pruned linear"],
                                           frame["Most pruned linear"], strict=True)],
        hoverinfo="text"))
    mean = float(values.mean())
    fig.add_hline(y=mean, line_dash="dot", line_color="#444444",
                  annotation_text=f"mean {mean:.2f}%", annotation_position="top right",
                  annotation_font_color="#444444")
    if target is not None and target > 0:
        fig.add_hline(y=target * 100, line_dash="dash", line_color="#d62728",
                      annotation_text=f"target {target * 100:g}%", annotation_position="top left",
                      annotation_font_color="#d62728")
    top = max(float(values.max()), (target or 0) * 100)
    fig.update_layout(**{**_LAYOUT, "height": 380}, title=title, showlegend=False, bargap=0.15)
    fig.update_xaxes(title="Block", dtick=1 if len(frame) <= 40 else None)
    fig.update_yaxes(title="Sparsity", ticksuffix="%", range=[0, max(top * 1.12, 1.0)])
    return fig


# -- activation sparsity -------------------------------------------------------------------------
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
              + (f" · run {int(s)}" if s is not None and not pd.isna(s) else "") for m, t, g, s in
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


# -- compute time and ablation grids (seed 004 Tables 3 and 4) ----------------------------------
def compute_time_chart(long: pd.DataFrame, title: str = "Pruning time") -> go.Figure:
    """Seconds per method as grouped bars, one group per (model, sparsity)."""
    if long.empty:
        return empty_figure("No pruning times stored for this selection.")
    if long["method"].nunique() > MAX_SETTING_LINES * 2:  # too many variants: one bar a method
        variants = long["method"].nunique()
        long = long.assign(method=[T.method_label(spec.get("method", m)) for spec, m in
                                   zip(long["spec"], long["method"], strict=True)])
        long = long.sort_values("run", kind="stable").drop_duplicates(
            ["method", "model", "sparsity"], keep="last").sort_index()
        title += f" (latest run of each method; {variants} setting variants in the table)"
    fig = go.Figure()
    x_order = list(dict.fromkeys(f"{m} · {s}" for m, s in
                                 zip(long["model"], long["sparsity"], strict=True)))
    for index, (method, part) in enumerate(long.groupby("method", sort=False)):
        base = part["spec"].iloc[0].get("method", "") if len(part) else ""
        fig.add_trace(_trace("bar",
            x=[f"{m} · {s}" for m, s in zip(part["model"], part["sparsity"], strict=True)],
            y=part["seconds"], name=method, marker_color=method_color(base, index),
            text=[f"{v:.1f}" for v in part["seconds"]], textposition="outside",
            hovertext=[hover_text(r, src, spec, f"{method}: {v:.2f} s") for r, src, spec, v in
                       zip(part["run"], part["source"], part["spec"], part["seconds"],
                           strict=True)],
            hoverinfo="text"))
    fig.update_layout(**_LAYOUT, title=title, barmode="group", bargap=0.2)
    fig.update_xaxes(categoryorder="array", categoryarray=x_order, title="Model · sparsity")
    fig.update_yaxes(title="Seconds", rangemode="tozero")
    return fig


def _grid_hover(row_param: str, row: str, col_param: str, col: str, shown: str,
                runs: pd.Series | None, index: int, spec: str) -> str:
    run = runs.iloc[index] if runs is not None else None
    lines = [f"{row_param}={row}, {col_param}={col}: {shown}",
             T.run_reference(int(run)) if run is not None and not pd.isna(run) else "no run",
             f"spec: {spec}" if spec else ""]
    return "<br>".join(_wrap(line) for line in lines if line)


def ablation_heatmap(table: T.Table, title: str, spec: str = "") -> go.Figure:
    """The grid of :func:`core.ablations.ablation_table` as a heatmap with the values written
    in the cells and the best cell outlined; hover names each cell's run and the grid's shared
    ``spec`` (the settings every cell has in common)."""
    frame = table.frame
    if table.empty or len(table.columns) < 2:
        return empty_figure("No grid to draw.")
    row_name, *cols = table.columns
    shown = table.display()
    z = [[float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
          for v in frame[c]] for c in cols]
    z = [list(r) for r in zip(*z, strict=True)]  # rows x columns
    text = [[shown.iloc[i][c] for c in cols] for i in range(len(frame))]
    rows = list(frame[row_name])
    row_param, _, col_param = row_name.partition(" \\ ")
    hover = [[_grid_hover(row_param, r, col_param, c, text[i][j], frame.get("_run:" + c),
                          i, spec) for j, c in enumerate(cols)] for i, r in enumerate(rows)]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, text=text, texttemplate="%{text}", colorscale="Viridis_r",
        colorbar={"title": "PPL"}, xgap=2, ygap=2, customdata=hover,
        hovertemplate="%{customdata}<extra></extra>"))
    for i, row in enumerate(text):
        for j, cell in enumerate(row):
            if cell.endswith("(best)"):
                fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                              line={"color": "#d62728", "width": 3})
    # the columns' axis is on top: the title goes above it, with room for both
    fig.update_layout(**{**_LAYOUT, "height": 170 + 48 * len(rows),
                         "margin": {**_LAYOUT["margin"], "t": 110}},
                      title={"text": title, "y": 0.98, "yanchor": "top", "yref": "container"})
    fig.update_xaxes(title=row_name.split(" \\ ")[-1], type="category", side="top")
    fig.update_yaxes(title=row_name.split(" \\ ")[0], type="category", autorange="reversed")
    return fig


def levels_chart(levels: pd.DataFrame, title: str = "Per-block kept fraction") -> go.Figure:
    """Per-block levels of a search's full-set runs (``activation_views.search_levels``): the
    configured kept fraction as a solid line, the one measured during decode as a dotted line."""
    if levels.empty:
        return empty_figure("No per-block levels stored for this search (published searches "
                            "print none).")
    fig = go.Figure()
    for i, (config, part) in enumerate(levels.groupby("config", sort=False)):
        color = (METHOD_COLORS["coreinfer"] if str(config) == "CoreInfer"
                 else PALETTE[i % len(PALETTE)])
        run = int(part["run_id"].iloc[0])
        fig.add_trace(_trace("scatter",
            x=part["block"], y=part["configured"], mode="lines+markers",
            name=f"{config}: configured", line={"color": color},
            hovertext=[f"{T.run_reference(run)}<br>{config}, block {b}: configured {v:.3f}"
                       for b, v in zip(part["block"], part["configured"], strict=True)],
            hoverinfo="text"))
        measured = part[part["measured"].notna()]
        if not measured.empty:
            fig.add_trace(_trace("scatter",
                x=measured["block"], y=measured["measured"], mode="lines+markers",
                name=f"{config}: measured", line={"color": color, "dash": "dot"},
                marker={"symbol": "circle-open"},
                hovertext=[f"{T.run_reference(run)}<br>{config}, block {b}: measured {v:.3f}"
                           for b, v in zip(measured["block"], measured["measured"],
                                           strict=True)],
                hoverinfo="text"))
    fig.update_layout(**_LAYOUT, title=title)
    fig.update_xaxes(title="Block", dtick=1)
    fig.update_yaxes(title="Kept fraction of FFN neurons")
    return fig


# -- OWL block targets and sweeps (issue 8) -----------------------------------------------------
def block_targets_chart(table: T.Table, owl_targets: Mapping[int, float] | None = None,
                        target: float | None = None, title: str = "Sparsity by block",
                        run_id: Any = None, source: str = "",
                        spec: Mapping[str, Any] | None = None) -> go.Figure:
    """Measured sparsity per block (bars) with the OWL target of each block (line and markers)
    and the overall target; hover names the run and its spec."""
    fig = block_sparsity_chart(table, target, title)
    frame = table.frame
    if table.empty or frame["Sparsity"].isna().all():
        return fig
    spec = spec or {}
    owl = dict(owl_targets or {})
    values = frame["Sparsity"].astype(float) * 100
    fig.data[0].hovertext = [
        hover_text(run_id, source, spec, f"block {b}: measured {v:.3f}%"
                   + (f", OWL target {owl[int(b)] * 100:.3f}%" if int(b) in owl else ""),
                   f"least pruned: {lo}", f"most pruned: {hi}")
        for b, v, lo, hi in zip(frame["Block"], values, frame["Least pruned linear"],
                                frame["Most pruned linear"], strict=True)]
    if owl:
        blocks = sorted(owl)
        fig.add_trace(_trace("scatter",
            x=blocks, y=[owl[b] * 100 for b in blocks], mode="lines+markers",
            name="OWL target", line={"color": "#ff7f0e", "width": 2},
            marker={"symbol": "diamond", "size": 8, "color": "#ff7f0e"},
            hovertext=[hover_text(run_id, source, spec, f"block {b}: OWL target "
                                                        f"{owl[b] * 100:.3f}%") for b in blocks],
            hoverinfo="text"))
        top = max(float(values.max()), max(owl.values()) * 100, (target or 0) * 100)
        fig.update_layout(showlegend=True)
        fig.update_yaxes(range=[0, max(top * 1.12, 1.0)])
    return fig


def _sweep_hover(rec: Mapping[str, Any], params: list[str]) -> str:
    values = ", ".join(f"{p}={rec[p]}" for p in params)
    ppl = rec.get("ppl")
    result = (f"PPL {ppl:.2f}" if isinstance(ppl, (int, float)) and math.isfinite(ppl)
              else str(rec.get("status", "no value")))
    run = rec.get("run")
    return hover_text(run if run is not None and not pd.isna(run) else "—", "own run",
                      values, result)


def sweep_scatter(cells: pd.DataFrame, param: str, title: str = "Sweep") -> go.Figure:
    """Perplexity of every sweep cell against one swept parameter (log y axis; a log x axis
    too when the parameter spans two decades or more, as alpha's 0.01-100 does); cells
    without a usable perplexity (diverged, collapsed, not run) are red crosses in a strip of
    their own above the perplexity scale, labelled with their status."""
    if cells.empty or param not in cells:
        return empty_figure("No sweep cells to plot.")
    params = [c for c in cells.columns if c not in ("run", "status", "ppl", "ppl_status")]
    ok = cells[cells["ppl"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    bad = cells.drop(index=ok.index)
    fig = go.Figure()
    if not ok.empty:
        fig.add_trace(_trace("scatter",
            x=ok[param], y=ok["ppl"], mode="markers", name="cell",
            marker={"size": 10, "color": "#1f77b4", "line": {"width": 1, "color": "#ffffff"}},
            hovertext=[_sweep_hover(r, params) for r in ok.to_dict("records")],
            hoverinfo="text"))
    if not bad.empty:
        fig.add_trace(_trace("scatter",
            x=bad[param], y=[EDGE] * len(bad), yaxis="y2", mode="markers+text",
            name="no usable PPL (top strip)",
            text=[str(s) for s in bad["status"]], textposition="bottom center",
            textfont={"size": 10, "color": "#b00020"},
            marker={"symbol": "x", "size": 11, "color": "#b00020"},
            hovertext=[_sweep_hover(r, params) for r in bad.to_dict("records")],
            hoverinfo="text"))
    fig.update_layout(**_LAYOUT, title=title)
    if not bad.empty:  # a strip of its own above the perplexity scale
        fig.update_layout(yaxis={"domain": [0, 0.84]},
                          yaxis2={"domain": [0.88, 1], "range": [0, 1], "visible": False})
    decades = _decades(cells[param])
    fig.update_xaxes(title=param + (" (log scale)" if decades else ""),
                     type="log" if decades else None)
    readable_log_y(fig, "Perplexity (log scale)")
    return fig


def _decades(values: pd.Series) -> bool:
    """Whether a parameter's numbers are all positive and span two decades or more (drawn on
    a log axis)."""
    numbers = [float(v) for v in values if _number(v) and not isinstance(v, bool)]
    return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


EDGE = 0.7  # the height of the cells without a perplexity in their strip (0 to 1)


def sweep_parallel_chart(cells: pd.DataFrame, params: list[str],
                         title: str = "Sweep: parallel coordinates") -> go.Figure:
    """One line per sweep cell through its parameter values and its perplexity (coloured by
    perplexity, lower = darker); cells without a finite perplexity are counted in the title."""
    if cells.empty or not params:
        return empty_figure("No sweep cells to plot.")
    numeric = [p for p in params
               if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in cells[p] if not pd.isna(v))]
    ok = cells[cells["ppl"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    if ok.empty:
        return empty_figure("No sweep cell has a finite perplexity yet.")
    dimensions = []
    for p in params:
        if p in numeric and _decades(ok[p]):  # alpha's 0.01-100: log10 values, labelled
            values = ok[p].astype(float)
            ticks = [10.0 ** e for e in range(math.floor(math.log10(values.min())),
                                               math.ceil(math.log10(values.max())) + 1)]
            dimensions.append({"label": f"{p} (log scale)", "values": np.log10(values).tolist(),
                               "tickvals": np.log10(ticks).tolist(),
                               "ticktext": [f"{t:g}" for t in ticks]})
        elif p in numeric:
            dimensions.append({"label": p, "values": ok[p].astype(float).tolist()})
        else:  # a categorical parameter: its values at evenly spaced ticks
            cats = sorted({str(v) for v in ok[p]})
            dimensions.append({"label": p, "values": [cats.index(str(v)) for v in ok[p]],
                               "tickvals": list(range(len(cats))), "ticktext": cats})
    dimensions.append({"label": "perplexity", "values": ok["ppl"].astype(float).tolist()})
    left_out = len(cells) - len(ok)
    fig = go.Figure(go.Parcoords(
        line={"color": ok["ppl"].astype(float).tolist(), "colorscale": "Viridis_r",
              "showscale": True, "colorbar": {"title": {"text": "PPL"}}},
        dimensions=dimensions))
    full = title + (f"<br><sup>{left_out} cell{'s' if left_out > 1 else ''} without a finite "
                    "perplexity not drawn</sup>" if left_out else "")
    fig.update_layout(**{**_LAYOUT, "margin": {"l": 70, "r": 50, "t": 90, "b": 40}}, title=full)
    return fig
