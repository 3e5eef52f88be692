"""Evaluation of an in-memory model: perplexity protocol and lm-eval tasks (``tasks/`` YAML).

May import ``core.engine`` and ``core.config`` only."""
