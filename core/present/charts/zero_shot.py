"""Zero-shot charts: retention, the per-task breakdown and the drop from dense
(no Streamlit here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.analysis import noise
from core.present import tables as T
from core.present.charts.base import (
    _LAYOUT,
    PUBLISHED_OPACITY,
    _trace,
    _wrap,
    empty_figure,
    hover_text,
    method_color,
    short_source,
)

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
    labels = _bar_labels(frame)
    for origin, part in frame.groupby("Origin", sort=False):
        published = origin == T.ORIGIN_NAMES["published"]
        fig.add_trace(_trace("bar",
            y=[labels[i] for i in part.index], x=part["Retention"] * 100,
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


def _bar_labels(frame: pd.DataFrame) -> dict[Any, str]:
    """Each bar's label (by row): an own run's with its number, a published figure's with its
    source (never its internal id); labels that would repeat are numbered, as each bar needs
    its own on the axis."""
    seen: dict[str, int] = {}
    out = {}
    for index, rec in zip(frame.index, frame.to_dict("records"), strict=True):
        what = f"{rec['Model']} · {rec['Method']}"
        label = (f"{what} · {short_source(rec['Source'])}"
                 if rec["Origin"] == T.ORIGIN_NAMES["published"] else f"{what} · own #{rec['Run']}")
        seen[label] = seen.get(label, 0) + 1
        out[index] = label if seen[label] == 1 else f"{label} ({seen[label]})"
    return out


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


