"""The official TRELLIS.2 networks, one file per concept, with the official state-dict key names.

``model_class(name)`` maps the ``name`` field of an official ``ckpts/*.json`` to our class. Every class accepts
the official JSON ``args`` as keyword arguments (training-only args are accepted and ignored explicitly).
"""
from __future__ import annotations

import importlib

from ..errors import InputError

__all__ = ["MODEL_CLASSES", "model_class"]

# official class name -> (module in this package, class name)
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "SparseStructureFlowModel": ("structure_flow", "SparseStructureFlowModel"),
    "SLatFlowModel": ("slat_flow", "SLatFlowModel"),
    "ElasticSLatFlowModel": ("slat_flow", "SLatFlowModel"),  # training-only memory mixin; identical at inference
    "SparseStructureDecoder": ("structure_decoder", "SparseStructureDecoder"),
    "FlexiDualGridVaeDecoder": ("shape_decoder", "FlexiDualGridVaeDecoder"),
    "SparseUnetVaeDecoder": ("texture_decoder", "SparseUnetVaeDecoder"),
    "FlexiDualGridVaeEncoder": ("shape_encoder", "FlexiDualGridVaeEncoder"),
}


def model_class(name: str) -> type:
    """The class implementing the official model ``name`` (as written in a checkpoint's JSON)."""
    try:
        module_name, attr = MODEL_CLASSES[name]
    except KeyError:
        raise InputError(
            f"unknown model class {name!r} in checkpoint config; supported: {', '.join(sorted(MODEL_CLASSES))}"
        ) from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, attr)
