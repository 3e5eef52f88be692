"""A text file of any size is read in bounded memory: only as many tokens as the requested
windows need, tokenized a chunk at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from core.engine import data
from tests.tiny_assets import SAMPLE_TEXT, tiny_tokenizer

MEASURE = """
import json, sys
from pathlib import Path
from core.engine import data
from tests.tiny_assets import tiny_tokenizer
tokenizer = tiny_tokenizer()
calibration = data.calibration_ids(tokenizer, sys.argv[1], n_samples=2, seqlen=32, seed=0)
windows = data.evaluation_ids(tokenizer, sys.argv[1], seqlen=32, max_windows=4)
peak = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
            if l.startswith("VmHWM:"))
print(json.dumps({"calibration": list(calibration.shape), "windows": len(windows),
                  "peak_mb": peak / 1024}))
"""


def test_a_600_mb_text_file_calibrates_2_x_32_tokens_within_1_gb(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    line = (SAMPLE_TEXT + "\n").encode()
    with big.open("wb") as handle:
        for _ in range(600 * 2**20 // len(line) + 1):
            handle.write(line)
    assert big.stat().st_size >= 600 * 2**20
    out = subprocess.run([sys.executable, "-c", MEASURE, str(big)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["calibration"] == [2, 32] and found["windows"] >= 4 * 32
    assert found["peak_mb"] < 1024, found


def test_a_file_read_in_chunks_gives_the_whole_texts_tokens(tmp_path: Path, monkeypatch) -> None:
    tokenizer = tiny_tokenizer()
    text = tmp_path / "t.txt"
    text.write_text("\n".join([SAMPLE_TEXT[:700]] * 40))
    whole = data.tokenize(tokenizer, text.read_text())
    assert torch.equal(data.file_ids(tokenizer, text), whole)  # one chunk: exactly the same
    monkeypatch.setattr(data, "FILE_CHUNK_CHARS", 1000)  # cut at line ends: the same here too
    assert torch.equal(data.file_ids(tokenizer, text), whole)
    assert 200 <= len(data.file_ids(tokenizer, text, max_tokens=200)) < len(whole)
