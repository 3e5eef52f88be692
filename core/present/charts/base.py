"""What every chart shares: the template and layout, method colours, hover text, the log
axis of perplexities and its ticks (no Streamlit here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import plotly.graph_objects as go

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
    published = bool(source) and _number(run_id) and run_id < 0
    table = spec.get("table") if isinstance(spec, Mapping) else None
    lines = ([f"source: {T.published_name(source, table)}"] if published
             else [T.run_reference(run_id), "source: own run"])
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


