"""Exceptions raised by trellis2_core. Each says what failed, where, and what to do next."""
from __future__ import annotations

__all__ = ["Trellis2Error", "InputError", "WeightsError", "BackendError", "OutOfMemoryError", "CancelledError",
           "is_out_of_memory"]


class Trellis2Error(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(Trellis2Error, ValueError):
    """Bad user input (image, mask, parameters, latents)."""


class WeightsError(Trellis2Error):
    """Checkpoint files missing, unreadable, or not matching the model (lists the offending files/keys)."""


class BackendError(Trellis2Error):
    """A requested compute backend is not available on this machine."""


class OutOfMemoryError(Trellis2Error):
    """The device ran out of memory; the message names the setting to lower."""


class CancelledError(Trellis2Error):
    """The run was interrupted by the caller between two steps."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device (or host) running out of memory: torch's ``OutOfMemoryError``, a
    ``MemoryError``, or a backend ``RuntimeError`` saying "out of memory" (MPS, ROCm, cuDNN). The one test the CLI,
    the library and the nodes use before turning it into :class:`OutOfMemoryError` with their own hint."""
    if isinstance(err, MemoryError):
        return True
    import sys

    torch = sys.modules.get("torch")  # an OOM from torch means torch is loaded; never import it here
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
