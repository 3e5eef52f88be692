"""What every run spec shares: a pydantic base, field helpers that carry a label and an allowed
range, the checks common to several kinds, and the translation of pydantic's errors into
human-worded problems ("Calibration samples: 0 is not a whole number between 1 and 4096.").

A spec is a pydantic model: types, ranges and choices are checked when it is built (unknown
fields refused), so an invalid spec never exists.  :func:`check` builds one and returns every
problem at once: field problems, the checks between fields and those that need the machine
(files, devices, lm-eval tasks, and ``core.runs.preflight``: the model's config, text files,
memory).  Each run kind declares its spec class in its own module
(``core.runs.kinds``); the forms and the command line are built from these schemas.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from core import config
from core.engine import data, devices

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
#: A run's device, one name per device (``cuda`` is stored as ``cuda:0``).
Device = Annotated[str, AfterValidator(devices.normalize)]
DEVICE_HELP = ("auto: any GPU with room, one run per GPU (the CPU where there is none); cpu; "
               "cuda:N pins the run to GPU N (cuda is cuda:0); mps")
DTYPE_HELP = ("auto: the checkpoint's own dtype (bfloat16 or float16 for most hub models, "
              "float32 for the offline default). Statistics are always accumulated in float32.")
LIMITS = {"samples": (1, 4096), "seqlen": (8, 32768), "batch_size": (1, 512),
          "max_windows": (1, 100000)}


def whole(default: Any, low: int, high: int, label: str, **extra: Any) -> Any:
    """A whole-number field in [low, high] with the label its messages and form use."""
    return Field(default, ge=low, le=high, title=label, json_schema_extra=extra or None)


def fraction(default: Any, label: str, zero_ok: bool = False, below_one: bool = False,
             **extra: Any) -> Any:
    """A fraction in (0, 1] (or [0, 1] with ``zero_ok``, (0, 1) with ``below_one``)."""
    bounds: dict[str, float] = {"ge": 0} if zero_ok else {"gt": 0}
    bounds.update({"lt": 1} if below_one else {"le": 1})
    return Field(default, title=label, json_schema_extra=extra or None, **bounds)


def labelled(default: Any, label: str, **extra: Any) -> Any:
    """Any other field: its label (and form hints such as ``help`` or ``widget``)."""
    if callable(default):
        return Field(default_factory=default, title=label, json_schema_extra=extra or None)
    return Field(default, title=label, json_schema_extra=extra or None)


def device_field() -> Any:
    """The device field of every kind: ``auto`` where the machine has a GPU, else ``cpu``."""
    return labelled(devices.default_device, "Device", help=DEVICE_HELP)


class SpecModel(BaseModel):
    """Base of every run spec: strict types, unknown fields refused, dict round trip.

    A kind's spec declares ``kind`` (a Literal of its name), ``model``, ``device`` (where it
    runs) and a ``method`` (field or property), and says what decides its result in
    ``identity()``."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)
    #: Fields that are set by the system (a search's child runs, sweeps), not by a form.
    SYSTEM_FIELDS: ClassVar[tuple[str, ...]] = ("kind",)
    #: Fields whose non-default value tells a run apart in its label (``label_words``).
    LABEL_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Rebuild a stored spec (an unknown field is refused with its name)."""
        unknown = set(values) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown spec field(s): {sorted(unknown)}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(" ".join(messages(cls, exc))) from exc

    def sparsity_columns(self) -> tuple[float | None, str]:
        """(sparsity, pattern) of the run row: activation kinds change no weights."""
        return None, "activation"

    def baseline(self) -> Any:
        """The dense run this run is compared with (queued with it when missing), or None."""
        return None

    def summary(self, model: str) -> str:
        """What the run is, in a few words, for messages ('parameter search on ... with tiny')."""
        return f"{self.kind} run on {model}"

    def label_words(self) -> list[str]:
        """What tells this run apart from a default run of its method, in short words
        ('OWL M 5 λ 0.08', 'blocks 0–12', 'exact selection'): the fields in ``LABEL_FIELDS``
        whose value is not their default; kinds add their own (a method's parameters)."""
        return [word for name in self.LABEL_FIELDS if (word := self.field_word(name))]

    def setting_words(self) -> list[str]:
        """The settings that shaped this run's model, defaults included, in short words
        (the tables' Settings column); kinds override."""
        return [word for name in self.LABEL_FIELDS
                if (word := self.field_word(name, always=True))]

    def field_word(self, name: str, always: bool = False) -> str:
        """One field in short words ('' when unset, or when at its default unless ``always``):
        its ``short`` template (``{value}``), else its label and value."""
        info = type(self).model_fields[name]
        value = getattr(self, name)
        if value is None or value == "" or value == []:
            return ""
        if not always and value == info.get_default(call_default_factory=True):
            return ""
        template = extra_of(info).get("short")
        if template:
            return str(template).format(value=value)
        return f"{(info.title or name).lower()} {short_value(value)}"

    def cross_problems(self) -> list[str]:
        """Problems between fields (both valid on their own); kinds override."""
        return []

    def machine_problems(self) -> list[str]:
        """Problems that depend on the machine: files, devices, tasks; kinds override."""
        return []

    def problems(self) -> list[str]:
        """Every problem of a built spec (an empty list: it can be queued)."""
        return self.cross_problems() + self.machine_problems()


def short_value(value: Any) -> str:
    """A value in a label: 4.0 -> '4', [0, 12] -> '0–12', {'M': 5} -> 'M 5'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "–".join(short_value(v) for v in value) if len(value) == 2 else \
            ", ".join(short_value(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k} {short_value(v)}" for k, v in value.items())
    return str(value)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of a run spec (keys sorted), used to find an identical earlier run."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- pydantic errors -> human-worded problems ----------------------------------------------------
def bounds(info: FieldInfo) -> dict[str, float]:
    """The field's range constraints as {'ge': 1, 'le': 4096, ...}."""
    found: dict[str, float] = {}
    for item in info.metadata:
        for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(item, cls):
                found[key] = getattr(item, key)
    return found


def extra_of(info: FieldInfo) -> dict[str, Any]:
    """A field's form and command-line hints (``json_schema_extra``: form_label, help, cli...)."""
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def field_label(info: FieldInfo, name: str = "") -> str:
    """What the Launch form calls a field ('Tokens per sample'), which every message uses too:
    its ``form_label``, else its title."""
    return str(extra_of(info).get("form_label") or info.title or name.replace("_", " "))


def is_int(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    if getattr(annotation, "__origin__", None) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if getattr(arg, "__origin__", None) is Literal:
            return get_args(arg)
    return ()


def interval(limits: dict[str, float]) -> str:
    """'(0, 0.1]' from {'gt': 0, 'le': 0.1}."""
    left = f"[{limits['ge']:g}" if "ge" in limits else f"({limits.get('gt', float('-inf')):g}"
    right = f"{limits['le']:g}]" if "le" in limits else f"{limits.get('lt', float('inf')):g})"
    return f"{left}, {right}"


def field_message(label: str, info: FieldInfo, value: Any) -> str:
    """How a bad value of one field is worded, from the field's type and range."""
    limits = bounds(info)
    choices = literal_choices(info.annotation)
    if choices:
        return f"{label}: {value!r} is not one of {', '.join(map(str, choices))}."
    if is_int(info.annotation) and limits:
        return (f"{label}: {value!r} is not a whole number between {limits.get('ge')} and "
                f"{limits.get('le')}.")
    if limits == {"gt": 0, "le": 1}:
        return f"{label}: {value!r} is not a number above 0 and at most 1."
    if limits == {"gt": 0, "lt": 1}:
        return f"{label}: {value!r} is not a number above 0 and below 1."
    if limits == {"ge": 0, "le": 1}:
        return f"{label}: {value!r} is not a number between 0 and 1."
    if limits:
        return f"{label}: {value!r} is not a number in {interval(limits)}."
    return f"{label}: {value!r} is not allowed here."


def messages(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One human-worded problem per pydantic error (custom validators' messages verbatim)."""
    found = []
    for error in exc.errors():
        # a union's errors start with the tag of the member ('prune', 'samples')
        loc = [str(part) for part in error["loc"]]
        name = next((part for part in loc if part in model.model_fields), loc[-1] if loc else "")
        info = model.model_fields.get(name)
        if error["type"] == "value_error":  # a custom check: its own words, one per line
            found += str(error["ctx"]["error"]).splitlines()
        elif error["type"] == "extra_forbidden":
            found.append(f"{name}: unknown field; allowed: {', '.join(model.model_fields)}.")
        elif info is not None:
            found.append(field_message(field_label(info, name), info, error["input"]))
        else:
            found.append(f"{name}: {error['msg']}")
    return list(dict.fromkeys(found))


def check(cls: type[SpecModel], values: dict[str, Any]) -> tuple[Any, list[str]]:
    """Build a spec of ``cls`` from ``values``: (spec, []) or (None, every problem).

    When fields are invalid the checks between fields and of the machine still run, on the
    values that are valid, so a form shows every problem at once."""
    try:
        spec = cls.model_validate(values)
    except ValidationError as exc:
        # The other checks still run: on the values whose type is right (a value a custom
        # check refused keeps its value), defaults for the rest.
        mistyped = {str(e["loc"][0]) for e in exc.errors()
                    if e["loc"] and e["type"] != "value_error"}
        partial = cls.model_construct(**{k: v for k, v in values.items()
                                         if k in cls.model_fields and k not in mistyped})
        found = messages(cls, exc)
        # a field left at its default stands in for a wrong value: no message names that
        # default, which the user never gave
        stand_ins = tuple(f"{field_label(cls.model_fields[k], k)}:" for k in mistyped
                          if k in cls.model_fields)
        for step in (partial.cross_problems, partial.machine_problems):
            with contextlib.suppress(Exception):  # a partial spec may not support a check
                found += [p for p in step() if not p.startswith(stand_ins)]
        return None, list(dict.fromkeys(found))
    problems = spec.problems()
    return (None, problems) if problems else (spec, [])


# -- checks shared by several kinds -------------------------------------------------------------
def looks_like_path(name: str) -> bool:
    """A local path, as opposed to a hub id such as 'meta-llama/Llama-2-7b-hf'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def model_problems(model: str) -> list[str]:
    """No model, or a folder that does not exist (the rest: ``preflight.load_config``)."""
    if not model.strip():
        return ["Model: give 'smollm2-135m', a local folder or a hub id."]
    if looks_like_path(model) and not Path(model).expanduser().exists():
        return [f"Model: the folder {model!r} does not exist; give an existing model folder, "
                f"'{config.DEFAULT_MODEL}' or a hub id such as meta-llama/Llama-2-7b-hf."]
    return []


def source_problems(label: str, name: str) -> list[str]:
    if name in data.known_sources() or Path(name).expanduser().is_file():
        return []
    if looks_like_path(name) or name.endswith(".txt"):
        return [f"{label}: the file {name!r} does not exist."]
    return [f"{label} {name!r} is unknown: use one of {', '.join(data.known_sources())} "
            "or the path of a .txt file."]


def device_problems(device: str) -> list[str]:
    """What is wrong with a run's device on this machine (``auto`` always does: it falls back
    to the CPU)."""
    if device in ("cpu", devices.AUTO):
        return []
    index = devices.gpu_index(device)
    if index is not None and config.executor_name() == "ray":
        return []  # the cluster's GPUs, not this machine's: the Ray executor checks them
    if device == "mps":
        import torch

        ok = torch.backends.mps.is_available()
    elif index is not None:
        ok = index < devices_available()
    else:
        return [f"Device: {device!r} is not one of {devices.ACCEPTED}."]
    return [] if ok else [f"Device: {device!r} is not available on this machine; use auto or "
                          "cpu."]


def devices_available() -> int:
    """How many GPUs runs may name here (simulated ones included)."""
    if devices.simulated() is not None:
        return len(devices.gpus())
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def task_problems(tasks: list[str], label: str = "Zero-shot task") -> list[str]:
    from core.engine.evaluate import zeroshot

    return [p.replace("Zero-shot task", label) for p in zeroshot.validate_tasks(list(tasks))]


def check_block_range(value: list[int] | None) -> list[int] | None:
    """Field validator: [start, end) with 0 <= start < end."""
    if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1]):
        raise ValueError("Block range: give [start, end) with 0 <= start < end.")
    return value


def valid_block_range(value: Any) -> bool:
    """A given block range that passes :func:`check_block_range`."""
    try:
        return value is not None and check_block_range(value) is not None
    except (ValueError, TypeError, IndexError):
        return False


def check_fractions(label: str, values: list[float] | None, what: str) -> None:
    """Every value in [0, 1], else ValueError worded with ``what``."""
    bad = [v for v in values or [] if not 0 <= v <= 1]
    if bad:
        raise ValueError(f"{label}: {bad} {what}")
