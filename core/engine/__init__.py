"""The engine: models, data, adapters, masks, pruning, activation sparsity, evaluation.

Imports torch, transformers, lm-eval and ``core.config`` only; knows nothing of runs, stores or
pages."""
