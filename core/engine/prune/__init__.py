"""Weight pruning: the one block traversal (``runner``), OWL targets and the methods.

May import ``core.engine`` and ``core.config`` only."""
