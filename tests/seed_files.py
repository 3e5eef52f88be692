"""Where the tests read the seed reports: a copy in tests/seeds/ (so CI never skips them), or
the folder named by SPARSEBENCH_SEEDS."""

from __future__ import annotations

import os
from pathlib import Path

COPY = Path(__file__).resolve().parent / "seeds"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seed_folder() -> Path:
    return Path(os.environ.get("SPARSEBENCH_SEEDS") or COPY)


def seed_file(prefix: str) -> Path:
    """The seed report whose name starts with ``prefix`` ('000', '002', '003', '004')."""
    matches = sorted(seed_folder().glob(f"{prefix}_*.txt"))
    if not matches:
        raise FileNotFoundError(f"seed report {prefix}_*.txt not found in {seed_folder()}")
    return matches[0]
