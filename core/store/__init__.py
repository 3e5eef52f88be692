"""The results database (DuckDB): open and migrate (``db``), record results, published figures.

May import ``core.runs``, ``core.engine`` and ``core.config``."""
