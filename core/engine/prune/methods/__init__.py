"""Registry of pruning methods.  Adding a method = adding one module here that uses @register."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from core.engine.prune.methods.base import Collector, PruningMethod, Target

REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def available() -> list[str]:
    return sorted(REGISTRY)


def get_method(name: str, **params: Any) -> PruningMethod:
    """An instance of the named method with its parameters validated."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown pruning method {name!r}; available: {', '.join(available())}")
    return REGISTRY[name](**params)


_discover()

__all__ = ["Collector", "PruningMethod", "REGISTRY", "Target", "available", "get_method",
           "register"]
