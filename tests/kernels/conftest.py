"""Shared set-up for the kernel tests.

``trellis2_kernels`` (the folder ``kernels/trellis2_kernels``) is importable through pytest's ``pythonpath``; these
tests import it directly (not through trellis2_core), so they depend on the kernels package alone.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, text in (("slow", "slow test"), ("gpu", "needs a CUDA device")):
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_TRITON_IMPLS = ("trellis2_kernels.neighbor_map.triton_impl", "trellis2_kernels.submconv.triton_impl")

# Triton's interpreter only works when TRITON_INTERPRET=1 is set before triton is first imported (its own library
# functions are decorated at import). On machines without CUDA nothing can run compiled Triton kernels, so the
# interpreter is switched on for the session here; auto dispatch on CPU still picks the reference. With a GPU the
# variable is left alone (the `gpu` tests run the compiled kernels); set it yourself to run the interpreter tests.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_works() -> bool:
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(x_ptr, BLOCK: tl.constexpr):
        r = tl.arange(0, BLOCK)
        tl.store(x_ptr + r, tl.max(tl.load(x_ptr + r), axis=0) + 0 * r)

    x = torch.arange(4, dtype=torch.int32)
    try:
        _probe[(1,)](x, BLOCK=4)
    except Exception:  # noqa: BLE001 - any failure means "interpreter unusable in this process"; the test skips
        return False
    return x.tolist() == [3, 3, 3, 3]


@pytest.fixture(scope="session")
def triton_interpreter():
    """Run the Triton kernels in Triton's CPU interpreter (skips when that is not possible in this process)."""
    if not _triton_importable():
        pytest.skip("triton is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("TRITON_INTERPRET is not set (a GPU is present: the gpu-marked tests cover the kernels)")
    if not _interpreter_works():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels in its own process")
    for name in _TRITON_IMPLS:  # re-import the kernels under the interpreter if they were loaded compiled
        sys.modules.pop(name, None)
    yield


@pytest.fixture
def interpreted(triton_interpreter, monkeypatch):
    """``interpreted(name)`` imports the Triton module ``name`` afresh under the interpreter (Triton decides at
    decoration time) and drops it from ``sys.modules`` after the test, so later tests import it compiled."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    loaded: list[str] = []

    def load(name: str):
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
