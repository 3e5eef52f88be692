"""Plotly figures for the dashboard (no Streamlit here), one module per subject; this
package names them all (``charts.perplexity_chart``).

Own runs are drawn with filled markers and solid lines; published figures with open markers,
dotted lines and a text label naming their source.  Hover text names an own run by its
number and a published figure by its source and table.
"""

from __future__ import annotations

from core.present.charts.activation import (
    percent_of_coreinfer_chart,
    search_chart,
)
from core.present.charts.base import (
    _LAYOUT,
    LOG_MANTISSAS,
    LOG_PAD,
    MAX_TICKS,
    METHOD_COLORS,
    MIN_TICKS,
    NM_SYMBOLS,
    PALETTE,
    PUBLISHED_OPACITY,
    empty_figure,
    hover_text,
    log_ticks,
    method_color,
    readable_log_y,
    short_source,
)
from core.present.charts.layers import (
    block_sparsity_chart,
    block_targets_chart,
    levels_chart,
)
from core.present.charts.perplexity import (
    COLLAPSED_NAME,
    MANY_SETTINGS,
    MAX_SETTING_LINES,
    perplexity_chart,
)
from core.present.charts.sweeps import (
    EDGE,
    ablation_heatmap,
    compute_time_chart,
    sweep_parallel_chart,
    sweep_scatter,
)
from core.present.charts.zero_shot import (
    MAX_BARS,
    drop_chart,
    per_task_chart,
    retention_chart,
)

__all__ = [
    "COLLAPSED_NAME",
    "EDGE",
    "LOG_MANTISSAS",
    "LOG_PAD",
    "MANY_SETTINGS",
    "MAX_BARS",
    "MAX_SETTING_LINES",
    "MAX_TICKS",
    "METHOD_COLORS",
    "MIN_TICKS",
    "NM_SYMBOLS",
    "PALETTE",
    "PUBLISHED_OPACITY",
    "_LAYOUT",
    "ablation_heatmap",
    "block_sparsity_chart",
    "block_targets_chart",
    "compute_time_chart",
    "drop_chart",
    "empty_figure",
    "hover_text",
    "levels_chart",
    "log_ticks",
    "method_color",
    "per_task_chart",
    "percent_of_coreinfer_chart",
    "perplexity_chart",
    "readable_log_y",
    "retention_chart",
    "search_chart",
    "short_source",
    "sweep_parallel_chart",
    "sweep_scatter",
]
