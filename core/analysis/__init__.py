"""Analysis of stored results: baselines, retention, findings worded from the numbers.

May import ``core.store``, ``core.runs``, ``core.engine`` and ``core.config``."""
