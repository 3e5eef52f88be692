"""What a run returns: metric rows, layer statistics, search trials and child runs (nothing is
stored here; ``core.store.record`` writes a result in one transaction)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: progress(stage, done, total): called by long steps; the worker turns it into progress rows.
ProgressFn = Callable[[str, int, int], None]
#: say(line): one log line for the run's log.
Say = Callable[[str], None]


def quiet(_stage: str, _done: int, _total: int) -> None:
    """A progress function that reports nothing."""


@dataclass
class ChildRun:
    """A run a search stores beside itself (its full-set CoreInfer / best / AVG runs)."""

    spec: Any  # an ActivationSpec; its ``search`` is set to the parent's id when stored
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)  # search trials (kind 'search')
    children: list[ChildRun] = field(default_factory=list)
    spec_updates: dict[str, Any] = field(default_factory=dict)  # spec values resolved by the run
    #: Each perplexity dataset's per-window mean NLLs: {"dataset": ..., "nlls": [...]}.
    windows: list[dict[str, Any]] = field(default_factory=list)
