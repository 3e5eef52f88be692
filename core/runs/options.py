"""Command-line options built from the spec schemas and the methods' ``Params`` models.

Every field of a spec becomes an option (``--ppl-seqlen``, or the name its schema gives in
``json_schema_extra["cli"]``); every parameter of every registered pruning method becomes
``--<method>-<parameter>`` (``--sparsegpt-dampening``), so a new method's parameters appear on
the command line without code here.  Options left out keep the spec's defaults.
"""

from __future__ import annotations

import argparse
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.engine.prune.methods import REGISTRY
from core.runs.specs import extra_of

PARAM_PREFIX = "param:"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(annotation: Any) -> Any:
    """The type an option parses to: the non-None member of an optional annotation."""
    if get_origin(annotation) in (Union, UnionType):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def _argument(info: FieldInfo) -> dict[str, Any]:
    """argparse keywords (type, nargs, choices, action) for one schema field."""
    extra = extra_of(info)
    kind = _kind(info.annotation)
    if kind is bool:
        return {"action": "store_true"}
    if get_origin(kind) is Literal:
        return {"choices": list(get_args(kind))}
    if get_origin(kind) in (list, dict):
        item = get_args(kind)[-1]
        return {"nargs": extra.get("cli_nargs", "+"), "type": item if item in (int, float) else str,
                "metavar": tuple(extra["cli_metavar"]) if "cli_metavar" in extra else None}
    return {"type": kind if kind in (int, float) else str}


def _help(info: FieldInfo) -> str:
    extra = extra_of(info)
    text = extra.get("help") or info.description or ""
    default = info.get_default(call_default_factory=True)
    shown = "" if default in (None, [], {}, "") else f" (default {default})"
    words = ": ".join(part for part in (info.title, text) if part)
    return f"{words}{shown}".replace("%", "%%")


def add_spec_options(parser: argparse.ArgumentParser, spec: type[BaseModel],
                     skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``spec`` (system fields and ``skip`` left out)."""
    system = set(getattr(spec, "SYSTEM_FIELDS", ())) | {"method_params", *skip}
    for name, info in spec.model_fields.items():
        if name in system:
            continue
        flag = extra_of(info).get("cli", _flag(name))
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=_help(info),
                            **_argument(info))


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--<method>-<parameter>`` for every parameter of every registered method."""
    for method in sorted(REGISTRY):
        fields = REGISTRY[method].Params.model_fields
        if not fields:
            continue
        group = parser.add_argument_group(f"{method} parameters")
        for name, info in fields.items():
            arguments = {"metavar": name.upper(), **_argument(info)}
            if arguments.get("action") == "store_true":
                arguments.pop("metavar")
            group.add_argument(_flag(f"{method}_{name}"), dest=f"{PARAM_PREFIX}{method}:{name}",
                               default=argparse.SUPPRESS, help=_help(info), **arguments)


def spec_values(args: argparse.Namespace, spec: type[BaseModel]) -> dict[str, Any]:
    """The spec values given on the command line (method parameters gathered, problems raised
    as ValueError worded with the option)."""
    given = vars(args)
    values: dict[str, Any] = {}
    for name, info in spec.model_fields.items():
        if name not in given:
            continue
        extra, value = extra_of(info), given[name]
        if get_origin(_kind(info.annotation)) is dict:  # e.g. --owl M LAMBDA
            value = dict(zip(extra["cli_metavar"], value, strict=True))
        elif extra.get("cli_zero_is_none") and value == 0:
            value = None
        values[name] = value
    params = {key[len(PARAM_PREFIX):]: value for key, value in given.items()
              if key.startswith(PARAM_PREFIX)}
    method = values.get("method", spec.model_fields["method"].default)
    for key, value in params.items():
        owner, _, name = key.partition(":")
        if owner != method:
            raise ValueError(f"{_flag(f'{owner}_{name}')} is a parameter of {owner}, not of "
                             f"the chosen method {method!r}.")
        values.setdefault("method_params", {})[name] = value
    return values
