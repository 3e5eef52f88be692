"""What the pages show: labels, tables, Plotly charts, reports, comparisons and exports.

May import ``core.analysis``, ``core.store``, ``core.runs``, ``core.engine``; never streamlit."""
