"""The pruning-method interface: one class per method, with a small declared lifecycle.

The shared runner (``core.engine.prune.runner``) calls, in this order and nothing else:

1. ``prepare(traversal, target, block_range)``: one target per decoder block, before the block
   loop (uniform; OWL's layer-wise targets when the method was given ``owl``, from a dense walk
   of the blocks with the runner's one traversal).
2. For each block: ``block_collectors(block, adapter)`` (by default one ``collector`` per
   linear), fed the linears' inputs during one dense pass (``Collector.add_batch``; a collector
   that ``wants_output`` also gets the outputs), then ``prune_block``, which by default prunes
   each linear on its own with ``prune`` and may return notes for the run's report.

A method that prunes a block jointly (SparseLLM) overrides ``prune_block``.  A method keeps no
state between runs or blocks: what a block teaches is returned as its notes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from core.engine.adapters import Adapter, set_weight_matrix, weight_matrix
from core.engine.masks import Selection, checked_selection


@dataclass(frozen=True)
class Target:
    """What to prune: an unstructured fraction, or N:M (N pruned in every M consecutive inputs)."""

    sparsity: float = 0.0
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.m:
            if not (0 < self.n < self.m):
                raise ValueError(f"N:M needs 0 < N < M; got {self.n}:{self.m} "
                                 "(N weights pruned in every M, e.g. 2:4)")
        elif not (0.0 <= self.sparsity < 1.0):
            why = " (1.0 would remove every weight)" if self.sparsity >= 1 else ""
            raise ValueError(f"sparsity must be in [0, 1); got {self.sparsity}{why}")

    @classmethod
    def parse(cls, text: str | float) -> Target:
        """'0.5', '50%', 0.5 -> unstructured; '2:4' -> N:M."""
        if isinstance(text, (int, float)):
            return cls(sparsity=float(text))
        raw = str(text).strip()
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", raw)
        if match:
            n, m = int(match[1]), int(match[2])
            if not 0 < n < m:
                raise ValueError(f"N:M needs 0 < N < M; got {n}:{m} (N weights pruned in "
                                 "every M consecutive inputs, e.g. 2:4)")
            return cls(n=n, m=m)
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError as exc:
            raise ValueError(
                f"cannot read {text!r}: write 0.5, 50% or N:M like 2:4") from exc
        return cls(sparsity=value)

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def fraction(self) -> float:
        """The share of weights pruned."""
        return self.n / self.m if self.is_nm else self.sparsity

    @property
    def pattern(self) -> str:
        if self.is_nm:
            return f"{self.n}:{self.m}"
        return "dense" if self.sparsity == 0 else "unstructured"

    @property
    def label(self) -> str:
        return self.pattern if self.is_nm else f"{self.sparsity:.0%}"


class Collector:
    """Accumulates statistics of one linear's inputs over the calibration tokens."""

    #: True: ``add_batch`` is also given the linear's outputs (``outputs=``).
    wants_output: bool = False

    def add_batch(self, inputs: torch.Tensor) -> None:  # inputs: [tokens, in_features]
        raise NotImplementedError


class NoParams(BaseModel):
    """Parameters of a method that takes none.  A method's ``Params`` is a pydantic model: its
    fields (type, default, range, ``description``) are the method's parameters, and the Launch
    form and the command line are built from them."""

    model_config = ConfigDict(extra="forbid")


def param_rule(info: Any) -> str:
    """'>= 1', 'in [0, 1)', '> 0 (or empty for ...)' from a parameter field's constraints."""
    extra = info.json_schema_extra or {}
    if "rule" in extra:
        return str(extra["rule"])
    limits = {key: getattr(item, key) for item in info.metadata
              for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt"))
              if isinstance(item, cls)}
    low = (f"[{limits['ge']:g}" if "ge" in limits else f"({limits['gt']:g}"
           if "gt" in limits else None)
    high = (f"{limits['le']:g}]" if "le" in limits else f"{limits['lt']:g})"
            if "lt" in limits else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    return f"of type {getattr(info.annotation, '__name__', info.annotation)}"


class Walk(Protocol):
    """What ``prepare`` is given: the runner's one block traversal
    (``core.engine.prune.runner.Traversal``, which imports this module)."""

    model: nn.Module
    adapter: Adapter


class LayerwiseTargets(Protocol):
    """Per-block targets computed by a dense walk before the block loop
    (``core.engine.prune.owl.OWL``)."""

    def block_targets(self, traversal: Any, target: Target,
                      block_range: tuple[int, int]) -> list[Target]: ...


class PruningMethod(ABC):
    """Base class: subclasses set ``name``, a ``Params`` model and implement ``prune``.

    ``selection`` is the rule that turns scores into a mask (``core.engine.masks``): the
    reference code's (default) or exactly the target count.  ``owl`` (``core.engine.prune.owl``,
    for a method that ``supports_owl``) gives every block its own unstructured target."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True
    supports_owl: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = NoParams
    #: {parameter: default}, derived from ``Params``.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Where a method keeps data over every calibration token (SparseLLM's FFN data): (device,
    #: dtype), set by the run from its memory plan; None: on the compute device, in fp32.
    token_store: tuple[Any, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {name: f.default for name, f in cls.Params.model_fields.items()}

    def __init__(self, selection: Selection = "reference", owl: LayerwiseTargets | None = None,
                 **params: Any) -> None:
        self.selection = checked_selection(selection)
        if owl is not None and not self.supports_owl:
            raise ValueError(f"OWL layer-wise sparsity does not work with {self.name}")
        self.owl = owl
        unknown = set(params) - set(self.Params.model_fields)
        if unknown:
            raise ValueError(f"{self.name} has no parameter(s) {sorted(unknown)}; "
                             f"allowed: {sorted(self.defaults) or 'none'}")
        try:
            self.params = self.Params(**params).model_dump()
        except ValidationError as exc:
            raise ValueError("; ".join(self._messages(exc))) from exc

    def _messages(self, exc: ValidationError) -> list[str]:
        found = []
        for error in exc.errors():
            key = str(error["loc"][0])
            rule = param_rule(self.Params.model_fields[key])
            found.append(f"{self.name} {key} must be {rule}; got {error['input']!r}")
        return found

    @property
    def needs_data(self) -> bool:
        """Calibration windows are needed: for the method's statistics or for OWL's."""
        return self.needs_calibration or self.owl is not None

    def prepare(self, traversal: Walk, target: Target,
                block_range: tuple[int, int]) -> list[Target]:
        """One target per decoder block, before the block loop: ``target`` inside
        ``block_range`` and 0 outside, or OWL's layer-wise targets."""
        if self.owl is not None:
            return self.owl.block_targets(traversal, target, block_range)
        n_blocks = len(traversal.adapter.blocks(traversal.model))
        start, end = block_range
        return [target if start <= b < end else Target() for b in range(n_blocks)]

    def collector(self, module: nn.Module) -> Collector | None:
        """A statistics collector for one linear, or None when the method needs no data."""
        return None

    def block_collectors(self, block: nn.Module, adapter: Adapter) -> dict[str, Collector]:
        """The collectors of one block's linears, by name (a joint method needs to know which
        linear is which); by default ``collector`` of each."""
        found = {name: self.collector(module) for name, module in adapter.linears(block).items()}
        return {name: collector for name, collector in found.items() if collector is not None}

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: Collector | None, target: Target) -> torch.Tensor:
        """Return the pruned ``[out, in]`` fp32 weight (pruned entries exactly zero)."""

    def prune_block(self, block: nn.Module, adapter: Adapter,
                    stats: dict[str, Collector], target: Target) -> dict[str, Any] | None:
        """Prune every linear of one block; the default treats each linear on its own.  Returns
        notes for the run's report (e.g. ``{"warning": ...}``), or None."""
        for name, module in adapter.linears(block).items():
            weight = weight_matrix(module).float()
            set_weight_matrix(module, self.prune(weight, stats.get(name), target))
        return None
