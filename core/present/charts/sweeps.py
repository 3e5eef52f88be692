"""Compute time, ablation grids and sweeps (no Streamlit here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.present import tables as T
from core.present.charts.base import (
    _LAYOUT,
    _number,
    _trace,
    _wrap,
    empty_figure,
    hover_text,
    method_color,
    readable_log_y,
)
from core.present.charts.perplexity import MAX_SETTING_LINES


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
