"""Run kinds by name: each kind module in ``core.runs.kinds`` registers its spec class and its
execute function with :func:`register_kind`; the worker, the store and the forms look kinds up here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from core.runs.progress import Stage
from core.runs.results import ProgressFn, RunResult, Say, quiet
from core.runs.specs import messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunKind:
    name: str
    spec: type  # the spec class; its ``kind`` field equals ``name``
    execute: Callable[[Any, ProgressFn, Say], RunResult]
    title: str = ""  # how forms and pages name the kind ("Prune + evaluate")
    #: The stages a run of this kind goes through, with their expected costs (None: no plan).
    stages: Callable[[Any], list[Stage]] | None = None


KINDS: dict[str, RunKind] = {}


def register_kind(name: str, spec: type, execute: Callable[[Any, ProgressFn, Say], RunResult],
                  title: str = "", stages: Callable[[Any], list[Stage]] | None = None
                  ) -> RunKind:
    """Make run kind ``name`` available (called once by each kind module)."""
    if name in KINDS and KINDS[name].spec is not spec:
        raise ValueError(f"run kind {name!r} registered twice")
    KINDS[name] = RunKind(name, spec, execute, title or name, stages)
    return KINDS[name]


def discover(package: str = "core.runs.kinds") -> None:
    """Import every kind module of ``package`` so that it registers itself."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")


def all_kinds() -> list[RunKind]:
    """Every registered kind, the built-in ones first (prune, activation, search)."""
    discover()
    order = ("prune", "activation", "search")
    return sorted(KINDS.values(), key=lambda k: (order.index(k.name) if k.name in order
                                                 else len(order), k.name))


def get_kind(name: str) -> RunKind:
    discover()
    if name not in KINDS:
        raise ValueError(f"unknown run kind {name!r}; known: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def spec_union() -> TypeAdapter:
    """The discriminated union of every registered kind's spec, on ``kind``."""
    discover()
    specs = tuple(kind.spec for kind in KINDS.values())
    return TypeAdapter(Annotated[Union[specs], Field(discriminator="kind")])  # noqa: UP007


def spec_from_dict(values: dict[str, Any]) -> Any:
    """Rebuild a stored spec of any run kind (old specs without ``kind`` are prune runs)."""
    values = {**values, "kind": values.get("kind", "prune")}
    cls = get_kind(values["kind"]).spec
    unknown = set(values) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"unknown spec field(s): {sorted(unknown)}")
    try:
        return spec_union().validate_python(values)
    except ValidationError as exc:
        raise ValueError(" ".join(messages(cls, exc))) from exc


def execute(spec: Any, progress: ProgressFn = quiet, say: Say = log.info) -> RunResult:
    """Check ``spec`` and run it with its kind's execute function (nothing is stored here)."""
    problems = spec.problems()
    if problems:
        raise ValueError("Invalid run spec: " + " ".join(problems))
    return get_kind(spec.kind).execute(spec, progress, say)


def stage_plan(spec: Any) -> list[Stage]:
    """The stages a run of ``spec`` reports, in order, with their expected costs ([] when its
    kind has no plan: each stage then counts alone)."""
    kind = get_kind(spec.kind)
    return kind.stages(spec) if kind.stages else []
