"""trellis2_core: a plain-Python implementation of Microsoft TRELLIS.2 image-to-3D inference.

Usable without ComfyUI. Sub-packages: ``sparse`` (the sparse-voxel engine), ``models`` (the official networks),
``loading`` (official checkpoint layout), ``pipeline`` (samplers and stages).
"""
from __future__ import annotations

from .errors import BackendError, CancelledError, InputError, OutOfMemoryError, Trellis2Error, WeightsError

__version__ = "0.1.0"
__all__ = ["Trellis2Error", "InputError", "WeightsError", "BackendError", "OutOfMemoryError", "CancelledError",
           "__version__", "image_to_glb", "ImageToGlbResult"]

# re-exported lazily (PEP 562) so that `import trellis2_core` stays light and never pulls in the whole pipeline
_LAZY = {"image_to_glb": ".api", "ImageToGlbResult": ".api"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
