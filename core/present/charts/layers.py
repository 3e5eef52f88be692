"""Layer statistics: measured sparsity by block, OWL block targets, per-block kept fractions
(no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.present import tables as T
from core.present.charts.base import (
    _LAYOUT,
    METHOD_COLORS,
    PALETTE,
    _trace,
    empty_figure,
    hover_text,
)


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


