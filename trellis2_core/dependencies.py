"""Checks of the packages this pack needs but never installs itself: torch (and the Triton that comes with it).

PyTorch must match the machine (CPU, a CUDA version, ROCm, Apple), and inside ComfyUI it is ComfyUI's: so
``requirements.txt`` does not list torch or triton (pip would happily replace a working CUDA build), ``install.py``
pins the installed ones while it installs the rest, and the node pack and the CLI check them here, with a message
that says how to get the right build. Nothing here imports torch at module import.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys

from .errors import BackendError

__all__ = ["MIN_TORCH", "MIN_TRITON", "TORCH_INSTALL_HINT", "check_torch", "installed_version", "version_tuple",
           "triton_status"]

MIN_TORCH = (2, 4)
MIN_TRITON = (3, 2)
TORCH_INSTALL_HINT = (
    "Install the PyTorch build for your machine first (https://pytorch.org/get-started/locally/), e.g. "
    "CPU only: pip install torch --index-url https://download.pytorch.org/whl/cpu ; "
    "NVIDIA GPU with CUDA 12.8: pip install torch --index-url https://download.pytorch.org/whl/cu128 ; "
    "in ComfyUI keep ComfyUI's own torch (update ComfyUI's Python environment instead)."
)


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """``'2.13.0+cpu'`` → ``(2, 13, 0)`` (release numbers only)."""
    numbers = []
    for part in re.split(r"[.+-]", version):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _fmt(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def check_torch() -> str:
    """The installed torch version; BackendError (with how to install the right build) when missing or too old."""
    version = installed_version("torch")
    if version is None:
        try:  # a torch without package metadata (built from source, vendored): ask the module itself
            import torch
        except ImportError:
            raise BackendError(f"trellis2-comfy needs PyTorch >= {_fmt(MIN_TORCH)}, which is not installed in "
                               f"{sys.executable}. {TORCH_INSTALL_HINT}") from None
        version = str(torch.__version__)
    if version_tuple(version) < MIN_TORCH:
        raise BackendError(f"trellis2-comfy needs PyTorch >= {_fmt(MIN_TORCH)}, found {version} in {sys.executable}. "
                           f"This pack never upgrades torch itself. {TORCH_INSTALL_HINT}")
    return version


def triton_status() -> str | None:
    """None when Triton is fine (or absent: the PyTorch references are used), else a sentence saying what is off."""
    version = installed_version("triton") or installed_version("triton-windows")
    if version is not None and version_tuple(version) < MIN_TRITON:
        return (f"Triton {version} is older than {_fmt(MIN_TRITON)}: this pack's GPU kernels may fail to compile; "
                "update torch (which brings its matching Triton), or set TRELLIS2_KERNELS=reference to use the "
                "PyTorch references")
    return None
