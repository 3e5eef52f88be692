"""Activation sparsity: CoreInfer and the per-block sparsity-levels method (seed 003).

* :func:`apply_coreinfer` -> :class:`CoreInferHandle` (``stats()``, ``remove()``)
* :func:`collect_scores`, :func:`levels_from_scores`, :func:`threshold_for_goal`,
  :func:`average_levels`, :func:`search_configs`
* :func:`split_loglikelihood`, :func:`coreinfer_lm`: causal CoreInfer scores for loglikelihood
  (multiple-choice) tasks.
"""

from core.engine.activation.coreinfer import (
    CoreInferError,
    CoreInferHandle,
    apply_coreinfer,
    core_neurons,
    kept_count,
    neuron_counts,
    token_limit,
)
from core.engine.activation.levels import (
    BlockScores,
    GoalResult,
    LevelConfig,
    average_levels,
    collect_scores,
    levels_from_scores,
    mean_level,
    scores_from_activations,
    search_configs,
    threshold_for_goal,
)
from core.engine.activation.loglikelihood import coreinfer_lm, split_loglikelihood
from core.engine.activation.measure import CoreInferStats, FFNTimer

__all__ = [
    "BlockScores", "CoreInferError", "CoreInferHandle", "CoreInferStats", "FFNTimer",
    "GoalResult", "LevelConfig", "apply_coreinfer", "average_levels", "collect_scores",
    "core_neurons", "coreinfer_lm", "kept_count", "levels_from_scores", "mean_level",
    "neuron_counts", "scores_from_activations", "search_configs", "split_loglikelihood",
    "threshold_for_goal", "token_limit",
]
