"""Shared test fixtures: paths to the repository and to the shared golden cases and assets.

The conformance data and example assets live in ``../shared`` next to the checkout (our CI has it; a user's clone
does not, and those tests skip there). Under ``CI=true`` a missing ``../shared`` is an error instead: every test
that would skip for that reason fails, so CI can never pass by silently skipping the conformance gate.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
GOLDEN_DIR = SHARED_DIR / "golden"
_SHARED_WORDS = ("golden", "shared")


def in_ci() -> bool:
    """``CI`` is set to a true value (``true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    if in_ci() and not (GOLDEN_DIR / "index.json").is_file():
        raise pytest.UsageError(f"CI=true but the shared conformance data is missing: {GOLDEN_DIR} (expected "
                                "../shared next to the checkout); the golden tests must run in CI, not skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).lower()
        if any(word in reason for word in _SHARED_WORDS):
            report.outcome = "failed"
            report.longrepr = f"CI=true: skipped for missing shared data ({report.longrepr[2]}); ../shared must exist"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN_DIR}")
    return GOLDEN_DIR
