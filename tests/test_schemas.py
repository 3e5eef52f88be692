"""Specs and method parameters are pydantic schemas; the Launch form and the command line are
built from them.  A method added as one module (here in a temporary package) appears in both,
with its parameters, without form or CLI code; a run kind is one registered module."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

import cli
from core.engine.prune.methods import REGISTRY, get_method
from core.execution.local import LocalExecutor
from core.execution.run import run_and_store
from core.runs import registry
from core.runs.kinds.activation import ActivationSpec
from core.runs.kinds.prune import PruneSpec
from core.runs.kinds.search import SearchSpec
from core.runs.results import RunResult
from core.runs.specs import SpecModel, check, labelled, whole
from core.store import published, queries
from core.store.db import Store
from tests.page_helpers import open_page, widget

TOY_METHOD = '''
from pydantic import BaseModel, ConfigDict, Field

from core.engine.prune.methods import register
from core.engine.prune.methods.base import PruningMethod


@register
class Toy(PruningMethod):
    name = "toy"
    description = "Prunes nothing; a method written in a test."
    needs_calibration = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        strength: float = Field(0.5, gt=0, le=2, description="How hard the toy prunes.")
        rounds: int = Field(3, ge=1, description="How often.")

    def prune(self, weight, stats, target):
        return weight
'''


@pytest.fixture
def toy_method(tmp_path: Path) -> Iterator[str]:
    """A pruning method registered from a module in a temporary package."""
    package = tmp_path / "extra_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(textwrap.dedent(TOY_METHOD))
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("extra_methods.toy")
        yield "toy"
    finally:
        REGISTRY.pop("toy", None)
        for name in ("extra_methods.toy", "extra_methods"):
            sys.modules.pop(name, None)
        sys.path.remove(str(tmp_path))


def test_new_method_parameters_appear_on_the_command_line(toy_method: str) -> None:
    parser = cli.build_parser()
    prune = parser._subparsers._group_actions[0].choices["prune"]  # noqa: SLF001
    assert "--toy-strength" in prune.format_help() and "How hard the toy prunes" in (
        prune.format_help())
    args = parser.parse_args(["prune", "--method", "toy", "--toy-strength", "1.5",
                              "--toy-rounds", "2"])
    spec, problems = cli.prune_spec(args)
    assert problems == [] and spec.method_params == {"strength": 1.5, "rounds": 2}
    bad = parser.parse_args(["prune", "--method", "toy", "--toy-strength", "5"])
    assert cli.prune_spec(bad)[1] == [
        "Method parameters: toy strength must be in (0, 2]; got 5.0"]
    other = parser.parse_args(["prune", "--method", "wanda", "--toy-rounds", "2"])
    assert "--toy-rounds is a parameter of toy, not of the chosen method 'wanda'" in (
        cli.prune_spec(other)[1][0])


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh results file for the pages (published figures skipped); its path."""
    monkeypatch.setenv("SPARSEBENCH_DB", str(tmp_path / "r.duckdb"))
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(published, "FIGURES", tmp_path / "none.csv")
    monkeypatch.setattr(published, "TRIALS", tmp_path / "none-trials.csv")
    return tmp_path / "r.duckdb"


def test_new_method_and_its_parameters_appear_in_the_launch_form(toy_method: str,
                                                                 dashboard: Path) -> None:
    at = open_page("pages/launch.py")
    method = widget(at.selectbox, "Method")
    assert toy_method in method.options
    method.set_value(toy_method).run()
    assert not at.exception
    strength = widget(at.number_input, "Strength")
    assert strength.value == 0.5 and widget(at.number_input, "Rounds").value == 3
    assert "Prunes nothing" in " ".join(c.value for c in at.caption)


def test_method_parameters_are_a_schema() -> None:
    fields = REGISTRY["sparsegpt"].Params.model_fields
    assert set(fields) == {"blocksize", "dampening"} and fields["dampening"].default == 0.01
    assert REGISTRY["sparsegpt"].defaults == {"blocksize": 128, "dampening": 0.01}
    with pytest.raises(ValueError, match=r"sparsegpt dampening must be in \[0, 1\)"):
        get_method("sparsegpt", dampening=1.0)


def test_a_spec_cannot_be_built_invalid_and_check_words_every_problem() -> None:
    with pytest.raises(ValidationError):
        PruneSpec(samples=0)
    with pytest.raises(ValidationError):
        PruneSpec(unknown_field=1)
    with pytest.raises(ValidationError):
        PruneSpec(samples=True)  # strict: a bool is no whole number
    spec, problems = check(PruneSpec, {"samples": 0, "dtype": "int3", "nope": 1})
    assert spec is None
    assert "Samples: 0 is not a whole number between 1 and 4096." in problems
    assert "Weights dtype: 'int3' is not one of auto, float32, float16, bfloat16." in problems
    assert any(p.startswith("nope: unknown field") for p in problems)


def test_kinds_are_registered_and_stored_specs_come_back_through_the_union() -> None:
    registry.discover()
    assert {"prune", "activation", "search"} <= set(registry.KINDS)
    assert registry.KINDS["search"].spec is SearchSpec
    for spec in (PruneSpec(), ActivationSpec(tasks=["sb_everyday"]), SearchSpec()):
        again = registry.spec_from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and type(again) is type(spec)
    with pytest.raises(ValueError, match="unknown run kind 'nope'"):
        registry.spec_from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match=r"unknown spec field\(s\): \['colour'\]"):
        registry.spec_from_dict({"kind": "prune", "colour": "red"})


class EchoSpec(SpecModel):
    """A run kind written in a test: stores the number it is given."""

    kind: Literal["echo"] = "echo"
    model: str = labelled("smollm2-135m", "Model")
    number: int = whole(3, 1, 9, "Number", help="The number to store.")
    words: list[str] = labelled(list, "Words")
    device: str = labelled("cpu", "Device")

    @property
    def method(self) -> str:
        return "echo"

    def identity(self) -> dict:
        return self.to_dict()


def execute_echo(spec: EchoSpec, progress, say) -> RunResult:  # noqa: ANN001
    say(f"echo {spec.number}")
    return RunResult(metrics=[{"kind": "echo", "dataset": "-", "metric": "number",
                               "value": float(spec.number)}])


@pytest.fixture
def echo_kind() -> Iterator[str]:
    registry.register_kind("echo", EchoSpec, execute_echo, title="Echo")
    try:
        yield "echo"
    finally:
        registry.KINDS.pop("echo", None)


def test_a_new_run_kind_is_one_registered_spec_and_execute(
        echo_kind: str, dashboard: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalExecutor, "ensure_workers", lambda self: [])
    at = open_page("pages/launch.py")
    widget(at.radio, "Run kind").set_value("Echo").run()
    widget(at.number_input, "Number").set_value(12)
    widget(at.button, "Queue run").click().run()
    assert "Number: 12 is not a whole number between 1 and 9." in at.error[0].value
    widget(at.number_input, "Number").set_value(7)
    widget(at.text_input, "Words (comma separated)").set_value("a, b")
    widget(at.button, "Queue run").click().run()
    assert not at.error and "Queued run" in at.success[0].value
    store = Store(dashboard)
    run_id, stored = store.frame("SELECT id, spec FROM runs WHERE kind = 'echo'").iloc[0]
    spec = registry.spec_from_dict(json.loads(stored))
    assert spec == EchoSpec(number=7, words=["a", "b"])
    run_and_store(store, int(run_id), spec)
    assert queries.metric_rows(store, "echo")["value"].tolist() == [7.0]


def test_messages_name_only_the_values_the_user_gave(tmp_path) -> None:
    """An N:M without a group ('2:0') is worded as a bad N:M, not as 'sparsity 0'; a bad
    Tokens per sample (left at its default for the other checks) brings no second message
    about the default 512 the user never gave."""
    problems = check(PruneSpec, {"sparsity": "2:0"})[1]
    assert problems == ["Sparsity: N:M needs 0 < N < M; got 2:0 (N weights pruned in every M "
                        "consecutive inputs, e.g. 2:4)"]
    folder = tmp_path / "m"
    from tests.tiny_assets import tiny_llama_folder  # 256 positions: 512 would not fit

    tiny_llama_folder(folder)
    problems = check(PruneSpec, {"model": str(folder), "seqlen": 0, "ppl_seqlen": 128})[1]
    assert problems == ["Tokens per sample: 0 is not a whole number between 8 and 32768."]
