"""The pack's ComfyUI nodes (classic node API, importable without ComfyUI).

This table is the pack's table of contents: node id → class, and the names the node menu shows. Node ids are
``Trellis2<Verb><Noun>`` and never change once shipped (saved workflows refer to them).
"""
from __future__ import annotations

from . import comfy_bridge
from .background import Trellis2RemoveBackground
from .condition import Trellis2EncodeImage
from .decode import Trellis2DecodeMesh
from .export import Trellis2ExportGLB, Trellis2PreviewGLB
from .image_to_3d import Trellis2ImageTo3D
from .load import Trellis2LoadModel
from .mesh_ops import Trellis2DecimateMesh, Trellis2FillHoles, Trellis2UnwrapUV
from .sample import Trellis2SampleMaterial, Trellis2SampleShape, Trellis2SampleStructure
from .texturing import Trellis2BakeOntoMesh, Trellis2EncodeMesh, Trellis2LoadMesh

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "Trellis2LoadModel": Trellis2LoadModel,
    "Trellis2RemoveBackground": Trellis2RemoveBackground,
    "Trellis2EncodeImage": Trellis2EncodeImage,
    "Trellis2SampleStructure": Trellis2SampleStructure,
    "Trellis2SampleShape": Trellis2SampleShape,
    "Trellis2SampleMaterial": Trellis2SampleMaterial,
    "Trellis2DecodeMesh": Trellis2DecodeMesh,
    "Trellis2FillHoles": Trellis2FillHoles,
    "Trellis2DecimateMesh": Trellis2DecimateMesh,
    "Trellis2UnwrapUV": Trellis2UnwrapUV,
    "Trellis2ExportGLB": Trellis2ExportGLB,
    "Trellis2PreviewGLB": Trellis2PreviewGLB,
    "Trellis2ImageTo3D": Trellis2ImageTo3D,
    "Trellis2LoadMesh": Trellis2LoadMesh,
    "Trellis2EncodeMesh": Trellis2EncodeMesh,
    "Trellis2BakeOntoMesh": Trellis2BakeOntoMesh,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "Trellis2LoadModel": "Load TRELLIS.2 Model",
    "Trellis2RemoveBackground": "Remove Background (TRELLIS.2)",
    "Trellis2EncodeImage": "Encode Image (TRELLIS.2)",
    "Trellis2SampleStructure": "Sample Structure (TRELLIS.2)",
    "Trellis2SampleShape": "Sample Shape (TRELLIS.2)",
    "Trellis2SampleMaterial": "Sample Material (TRELLIS.2)",
    "Trellis2DecodeMesh": "Decode Mesh (TRELLIS.2)",
    "Trellis2FillHoles": "Fill Holes (TRELLIS.2)",
    "Trellis2DecimateMesh": "Decimate Mesh (TRELLIS.2)",
    "Trellis2UnwrapUV": "UV Unwrap (TRELLIS.2)",
    "Trellis2ExportGLB": "Export GLB (TRELLIS.2)",
    "Trellis2PreviewGLB": "Preview GLB (TRELLIS.2)",
    "Trellis2ImageTo3D": "Image to 3D (TRELLIS.2)",
    "Trellis2LoadMesh": "Load Mesh (TRELLIS.2 texturing)",
    "Trellis2EncodeMesh": "Encode Mesh (TRELLIS.2 texturing)",
    "Trellis2BakeOntoMesh": "Bake onto Mesh (TRELLIS.2 texturing)",
}

comfy_bridge.on_pack_load()  # inside ComfyUI only: models/trellis2 folder, .mjs MIME type

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
