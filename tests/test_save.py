"""Nothing a user owns is overwritten: a save folder is checked before anything is queued, and
the pruned model is written beside it and renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.engine.checkpoint import MARKER
from core.execution import jobs
from core.runs import registry
from core.runs.kinds.prune import PruneSpec
from core.runs.specs import check
from core.store.db import Store
from tests.tiny_assets import model_and_text


@pytest.fixture
def assets(tmp_path: Path) -> dict[str, str]:
    return model_and_text(tmp_path)


def values(assets: dict[str, str], save_dir: str, **change) -> dict:
    return {"model": assets["model"], "method": "wanda", "calibration": assets["text"],
            "samples": 4, "seqlen": 32, "ppl_datasets": [assets["text"]], "ppl_seqlen": 32,
            "max_windows": 2, "save_dir": save_dir, **change}


def checksum(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def refused(tmp_path: Path, spec_values: dict, words: str) -> None:
    spec, problems = check(PruneSpec, spec_values)
    assert spec is None and any(words in p for p in problems), problems
    store = Store(tmp_path / "r.duckdb").init()
    with pytest.raises(ValueError, match="Save to"):
        jobs.submit(store, PruneSpec(**spec_values))
    assert store.runs().empty


def test_a_save_over_the_models_own_folder_is_refused(assets, tmp_path):
    model = Path(assets["model"])
    before = checksum(model)
    for target in (model, model / "pruned", model.parent):
        refused(tmp_path, values(assets, str(target)),
                "is (or holds) the model's own folder")
    assert checksum(model) == before


def test_a_folder_holding_other_files_or_no_place_to_write_is_refused(assets, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("my notes")
    refused(tmp_path, values(assets, str(other)), "already holds files and is not an earlier "
                                                  "save of this run")
    assert (other / "notes.txt").read_text() == "my notes"
    refused(tmp_path, values(assets, "/proc/sparsebench-x"), "nothing can be written in")
    (tmp_path / "file").write_text("x")
    refused(tmp_path, values(assets, str(tmp_path / "file")), "is a file; give a folder")


def test_the_save_is_whole_or_absent_and_a_rerun_replaces_its_own(assets, tmp_path):
    target = tmp_path / "out" / "pruned"
    spec = PruneSpec(**values(assets, str(target)))
    assert spec.problems() == []
    registry.execute(spec, lambda *a: None, lambda text: None)
    marker = json.loads((target / MARKER).read_text())
    assert marker["identity"] == spec.identity_hash()
    assert not list(target.parent.glob(".*"))  # no partial folder left beside it
    saved = AutoModelForCausalLM.from_pretrained(target)
    assert saved.model.layers[0].mlp.up_proj.weight.dtype == torch.float32  # the checkpoint's
    assert check(PruneSpec, values(assets, str(target)))[1] == []  # an earlier save of this run
    other = values(assets, str(target), method="magnitude")
    assert any("not an earlier save" in p for p in check(PruneSpec, other)[1])
    cancelled = tmp_path / "cancelled"

    def cancel(stage: str, done: int, _total: int) -> None:
        if stage == "pruning" and done == 1:
            raise KeyboardInterrupt("cancelled by the user")

    with pytest.raises(KeyboardInterrupt):
        registry.execute(PruneSpec(**values(assets, str(cancelled))), cancel,
                         lambda text: None)
    assert not cancelled.exists() and not list(tmp_path.glob(".cancelled*"))
