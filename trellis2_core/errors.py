"""Exceptions raised by trellis2_core. Each says what failed, where, and what to do next."""
from __future__ import annotations

__all__ = ["Trellis2Error", "InputError", "WeightsError", "BackendError", "OutOfMemoryError", "CancelledError"]


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
