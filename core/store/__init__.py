"""The results database (DuckDB): open and migrate (``db``), record results, published figures,
runs' names, notes and tags (``meta``).

May import ``core.runs``, ``core.engine`` and ``core.config``."""
