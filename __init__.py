"""ComfyUI entry point of the trellis2-comfy node pack.

ComfyUI imports this file as a package. It only wires the node table and the web folder; no model or GPU work
happens at import. The library itself (``trellis2_core``) is importable without ComfyUI.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)  # makes trellis2_core importable from a custom_nodes clone; never shadows other modules

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
