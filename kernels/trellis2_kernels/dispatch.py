"""Choosing between a Triton kernel and its PyTorch reference.

The rule: Triton on CUDA/ROCm devices when Triton is importable and can compile for the GPU (NVIDIA compute
capability ≥ 7.0, PyTorch Inductor's own limit), the reference everywhere else (CPU, MPS, older GPUs). Which dtypes
a GPU's Triton handles (bfloat16 from compute capability 8.0) is the caller's concern (``trellis2_core.capabilities``).
``TRELLIS2_KERNELS`` is the one debugging override, read at call time (never at import):

* unset / ``auto``  - the rule above;
* ``reference``     - always the PyTorch reference;
* ``triton``        - Triton wherever it can run: CUDA/ROCm, or CPU tensors when ``TRITON_INTERPRET=1``
                      (that is how the kernels are tested on machines without a GPU).

Unknown values raise, so a typo never silently changes what runs.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["triton", "reference"]
_ENV = "TRELLIS2_KERNELS"
_VALID = ("auto", "reference", "triton")


@dataclass(frozen=True)
class KernelPolicy:
    """How to pick an implementation. ``mode=None`` defers to the ``TRELLIS2_KERNELS`` environment variable."""

    mode: Literal["auto", "reference", "triton"] | None = None

    def resolved_mode(self) -> str:
        mode = self.mode if self.mode is not None else os.environ.get(_ENV, "auto").strip().lower() or "auto"
        if mode not in _VALID:
            raise ValueError(
                f"{_ENV}={mode!r} is not a valid kernel mode; use one of {', '.join(_VALID)} "
                "(or unset it for automatic selection)."
            )
        return mode


DEFAULT_POLICY = KernelPolicy()


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_MIN_CAPABILITY = (7, 0)  # Triton's oldest NVIDIA target (Inductor raises GPUTooOldForTriton below it)


@functools.lru_cache(maxsize=None)
def _gpu_too_old(index: int | None) -> bool:
    """True for an NVIDIA GPU below compute capability 7.0 (ROCm devices are left to Triton)."""
    if torch.version.hip is not None:
        return False
    index = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_capability(index) < _MIN_CAPABILITY


def choose(op: str, device: torch.device, policy: KernelPolicy | None = None) -> Backend:
    """Return ``"triton"`` or ``"reference"`` for running ``op`` on ``device`` under ``policy``."""
    mode = (policy or DEFAULT_POLICY).resolved_mode()
    if mode == "reference":
        return "reference"
    gpu = device.type == "cuda"  # ROCm builds of PyTorch also report "cuda"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{_ENV}=triton but Triton is not installed; `pip install triton` or unset {_ENV}.")
        if gpu and _gpu_too_old(device.index):
            raise RuntimeError(f"{_ENV}=triton cannot run {op!r} on {device}: Triton needs compute capability "
                               f"{_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]} or newer; unset {_ENV}.")
        if gpu or (device.type == "cpu" and triton_interpreting()):
            return "triton"
        raise RuntimeError(
            f"{_ENV}=triton cannot run {op!r} on device {device}: Triton needs a CUDA/ROCm device, or "
            "TRITON_INTERPRET=1 for CPU tensors."
        )
    return "triton" if gpu and triton_available() and not _gpu_too_old(device.index) else "reference"
