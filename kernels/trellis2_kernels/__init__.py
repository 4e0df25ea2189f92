"""trellis2_kernels: the pack's compute kernels.

Every op lives in its own folder with three files: ``reference.py`` (the PyTorch semantics oracle, runs on any
device), ``triton_impl.py`` (the Triton kernel and its launcher, imported lazily so CPU-only installs never touch
Triton) and ``__init__.py`` (input checks and dispatch); ``fp8_linear`` has ``scaled_mm_impl.py`` (PyTorch's fp8
GEMM) in place of a Triton kernel. This package imports only torch (and, lazily, triton) and uses relative imports
only: it is installed/loaded under the name ``trellis2_kernels``.
"""
from __future__ import annotations

from .dispatch import KernelPolicy, choose

__all__ = ["KernelPolicy", "choose"]
