"""Kernel selection: Triton on GPUs, references elsewhere, one validated environment override."""
from __future__ import annotations

import pytest
import torch

from trellis2_core._kernels import load

load()
import trellis2_kernels.dispatch as dispatch  # noqa: E402
from trellis2_kernels.dispatch import KernelPolicy, choose  # noqa: E402


def test_cpu_uses_the_reference_by_default(monkeypatch):
    monkeypatch.delenv("TRELLIS2_KERNELS", raising=False)
    assert choose("submconv", torch.device("cpu")) == "reference"


def test_cuda_uses_triton_unless_forced_to_reference(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(dispatch, "_gpu_too_old", lambda index: False)  # a GPU Triton supports (simulated)
    monkeypatch.delenv("TRELLIS2_KERNELS", raising=False)
    assert choose("submconv", torch.device("cuda")) == "triton"
    monkeypatch.setenv("TRELLIS2_KERNELS", "reference")
    assert choose("submconv", torch.device("cuda")) == "reference"


def test_gpus_triton_cannot_compile_for_use_the_reference(monkeypatch):
    """A GPU below compute capability 7.0 (simulated): the reference by default, a clear error when forced."""
    pytest.importorskip("triton")
    monkeypatch.setattr(dispatch, "_gpu_too_old", lambda index: True)
    monkeypatch.delenv("TRELLIS2_KERNELS", raising=False)
    assert choose("submconv", torch.device("cuda")) == "reference"
    with pytest.raises(RuntimeError, match="compute capability 7.0"):
        choose("submconv", torch.device("cuda"), KernelPolicy(mode="triton"))


def test_forcing_triton_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        choose("submconv", torch.device("cpu"), KernelPolicy(mode="triton"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose("submconv", torch.device("cpu"), KernelPolicy(mode="triton")) == "triton"


def test_unknown_override_raises(monkeypatch):
    monkeypatch.setenv("TRELLIS2_KERNELS", "fastest")
    with pytest.raises(ValueError, match="not a valid kernel mode"):
        choose("submconv", torch.device("cpu"))


def test_explicit_policy_beats_the_environment(monkeypatch):
    monkeypatch.setenv("TRELLIS2_KERNELS", "triton")
    assert choose("submconv", torch.device("cpu"), KernelPolicy(mode="reference")) == "reference"
