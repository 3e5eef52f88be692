"""Text sources: the offline Wikipedia split, calibration windows, local copies of hub data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.engine import data
from tests.tiny_assets import tiny_tokenizer


def test_wiki_offline_parts_never_overlap() -> None:
    calibration = data.load_text("wiki-offline", "calibration")
    evaluation = data.load_text("wiki-offline", "evaluation")
    titles = [set(line for line in text.splitlines() if line.startswith(" = "))
              for text in (calibration, evaluation)]
    assert titles[0] and titles[1] and not titles[0] & titles[1]
    assert len(calibration) > 5 * len(evaluation) > 100_000
    # No long passage of the evaluation text appears in the calibration text.
    paragraphs = [p for p in evaluation.splitlines() if len(p) > 200]
    assert paragraphs and not any(p in calibration for p in paragraphs[:50])


def test_calibration_windows_are_seeded(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text((data.load_text("wiki-offline", "calibration"))[:20000])
    tok = tiny_tokenizer()
    first = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=0)
    again = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=0)
    other = data.calibration_ids(tok, str(text), n_samples=4, seqlen=32, seed=1)
    assert first.shape == (4, 32)
    assert (first == again).all() and not (first == other).all()


def test_unknown_source_and_bad_split_are_explained() -> None:
    with pytest.raises(data.DataError, match="wiki-offline"):
        data.load_text("no-such-corpus", "evaluation")
    with pytest.raises(data.DataError, match="split"):
        data.load_text("wiki-offline", "train")


def test_hub_datasets_read_from_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    """The hub code path (datasets.load_dataset) on a local folder, never the network."""
    folder = tmp_path / "wikitext2"
    folder.mkdir()
    pd.DataFrame({"text": ["train line one", "train line two"]}).to_parquet(
        folder / "train-00000-of-00001.parquet")
    pd.DataFrame({"text": [" = Heading = ", "first test line", "second test line"]}).to_parquet(
        folder / "test-00000-of-00001.parquet")
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    pd.DataFrame({"sentence": ["a b", "c d"]}).to_parquet(ptb / "test-00000-of-00001.parquet")
    pd.DataFrame({"sentence": ["e f"]}).to_parquet(ptb / "train-00000-of-00001.parquet")
    monkeypatch.setenv("SPARSEBENCH_DATASETS_DIR", str(tmp_path))
    assert data.load_text("wikitext2", "evaluation") == (
        " = Heading = \n\nfirst test line\n\nsecond test line")
    assert data.load_text("wikitext2", "calibration") == "train line one\n\ntrain line two"
    assert data.load_text("ptb", "evaluation") == "a b c d"
    with pytest.raises(data.DataError, match="no folder"):
        data.load_text("c4", "evaluation")
