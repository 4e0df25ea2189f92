"""Shared test fixtures: paths to the repository and to the shared golden cases."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN_DIR}")
    return GOLDEN_DIR
