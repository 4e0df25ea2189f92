"""trellis2_core: a plain-Python implementation of Microsoft TRELLIS.2 image-to-3D inference.

Usable without ComfyUI. Sub-packages: ``sparse`` (the sparse-voxel engine), ``models`` (the official networks),
``loading`` (official checkpoint layout), ``pipeline`` (samplers and stages).
"""
from __future__ import annotations

from .errors import BackendError, CancelledError, InputError, OutOfMemoryError, Trellis2Error, WeightsError

__version__ = "0.1.0"
__all__ = ["Trellis2Error", "InputError", "WeightsError", "BackendError", "OutOfMemoryError", "CancelledError",
           "__version__"]
