"""Form widgets built from the pydantic schemas of run specs and method parameters.

A field's widget follows from its type (bool -> checkbox, a Literal -> selectbox, int / float ->
number input, str -> text input), its label and help from the schema (``form_label`` / ``help``
in ``json_schema_extra``, else the field's title and description).  Number inputs carry no
minimum or maximum: the value the user typed is the value that is checked, and an invalid one
is refused with the schema's message instead of being silently replaced by the widget.
"""

from __future__ import annotations

from typing import Any, get_args

import streamlit as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.runs.specs import extra_of, field_label, is_int, literal_choices


def label_of(model: type[BaseModel], name: str) -> str:
    return field_label(model.model_fields[name], name)


def help_of(model: type[BaseModel], name: str) -> str | None:
    info = model.model_fields[name]
    return extra_of(info).get("help") or info.description


def _optional(info: FieldInfo) -> bool:
    return type(None) in get_args(info.annotation)


def _is_float(info: FieldInfo) -> bool:
    return info.annotation is float or float in get_args(info.annotation)


def field_input(model: type[BaseModel], name: str, *, key: str, container: Any = st,
                value: Any = ..., label: str | None = None) -> Any:
    """One widget for field ``name`` of ``model``; returns the value as the spec takes it.

    An optional whole number whose form label says '(0 = all)' maps 0 to None; any other
    optional number left empty is None."""
    info = model.model_fields[name]
    value = info.get_default(call_default_factory=True) if value is ... else value
    text = label or label_of(model, name)
    hint = help_of(model, name)
    choices = literal_choices(info.annotation)
    if info.annotation is bool:
        return container.checkbox(text, bool(value), key=key, help=hint)
    if choices:
        return container.selectbox(text, choices, index=choices.index(value), key=key, help=hint)
    if is_int(info.annotation):
        zero_is_none = _optional(info) and "(0 = all)" in text
        shown = 0 if value is None and zero_is_none else value
        typed = container.number_input(text, value=shown, step=1, key=key, help=hint,
                                       placeholder="default" if shown is None else None)
        if typed is None:
            return None
        return None if zero_is_none and typed == 0 else int(typed)
    if _is_float(info):
        typed = container.number_input(text, value=None if value is None else float(value),
                                       step=0.01, format="%.4f", key=key, help=hint,
                                       placeholder="default" if value is None else None)
        return None if typed is None else float(typed)
    typed = container.text_input(text, "" if value is None else str(value), key=key, help=hint)
    return typed.strip() or (None if _optional(info) else "")


def params_inputs(params: type[BaseModel], key: str) -> dict[str, Any]:
    """A widget per parameter of a method's ``Params`` model, side by side; parameters left
    empty (None: "the architecture's default") are not passed."""
    names = list(params.model_fields)
    if not names:
        return {}
    columns = st.columns(len(names))
    chosen = {name: field_input(params, name, key=f"{key}-{name}", container=column,
                                label=name.replace("_", " ").capitalize())
              for column, name in zip(columns, names, strict=True)}
    return {name: value for name, value in chosen.items() if value is not None}


def _list_input(model: type[BaseModel], name: str, key: str) -> Any:
    """A comma-separated text field for a list (numbers parsed by the item type)."""
    info = model.model_fields[name]
    default = info.get_default(call_default_factory=True) or []
    text = st.text_input(f"{label_of(model, name)} (comma separated)",
                         ", ".join(map(str, default)), key=key, help=help_of(model, name))
    parts = [part.strip() for part in text.split(",") if part.strip()]
    item = get_args(next((a for a in (info.annotation, *get_args(info.annotation))
                          if getattr(a, "__origin__", None) is list), list[str]))[0]
    values: list[Any] = []
    for part in parts:
        try:
            values.append(item(part) if item in (int, float) else part)
        except ValueError:
            values.append(part)  # refused, with its field, by the spec check
    return values or (None if _optional(info) else [])


def spec_inputs(model: type[BaseModel], key: str) -> dict[str, Any]:
    """A widget for every field a user sets (system fields left out): the generic form of a
    run kind that has no form of its own."""
    system = set(getattr(model, "SYSTEM_FIELDS", ()))
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in system:
            continue
        kinds = (info.annotation, *get_args(info.annotation))
        if any(getattr(a, "__origin__", None) is list for a in kinds):
            values[name] = _list_input(model, name, f"{key}-{name}")
        elif any(getattr(a, "__origin__", None) is dict for a in kinds):
            continue  # nested settings: the kind's defaults
        else:
            values[name] = field_input(model, name, key=f"{key}-{name}")
    return values
