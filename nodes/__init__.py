"""The pack's ComfyUI nodes (classic node API, importable without ComfyUI).

This table is the pack's table of contents. Nodes are thin wrappers over ``trellis2_core``; they arrive with the
node-pack work (model loading, background removal, structure/shape/material sampling, decoding, mesh ops, export).
"""
from __future__ import annotations

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
