"""Shared set-up for the kernel tests: load ``kernels/`` under its install name ``trellis2_kernels``.

The loading is done here (not through trellis2_core) so these tests depend on the kernels package alone.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]


def _load_kernels() -> None:
    if "trellis2_kernels" in sys.modules:
        return
    root = _REPO / "kernels"
    spec = importlib.util.spec_from_file_location(
        "trellis2_kernels", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["trellis2_kernels"] = module
    spec.loader.exec_module(module)


_load_kernels()


def pytest_configure(config: pytest.Config) -> None:
    for name, text in (
        ("slow", "slow test (deselect with -m 'not slow')"),
        ("gpu", "needs a CUDA device"),
    ):
        config.addinivalue_line("markers", f"{name}: {text}")


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
