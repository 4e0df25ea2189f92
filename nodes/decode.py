"""Decode Mesh node: shape (+ material) latent → meshes with PBR voxels, and ComfyUI's core ``MESH`` (§1.1 5–6)."""
from __future__ import annotations

import torch

from trellis2_core.errors import InputError

from .checks import require_asset
from .core_io import decoded_core_mesh, voxel_output
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .types import (
    CATEGORY, CORE_MESH, CORE_VOXEL, MATERIAL, MESH_ASSET, PIPELINE, SHAPE, MaterialAsset, MeshAsset, ShapeAsset,
)

__all__ = ["Trellis2DecodeMesh"]


def _same_voxels(material: MaterialAsset, shape: ShapeAsset) -> bool:
    if material.shape is shape:
        return True
    a, b = material.material.slat.coords, shape.shape.slat.coords
    return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))


class Trellis2DecodeMesh:
    """Decode the latents into a triangle mesh and a volume of PBR voxels (textures are baked at export)."""

    DESCRIPTION = ("Decodes the shape latent into a mesh (flexible dual grid) and, with a material latent, the "
                   "PBR voxels the textures are baked from. Also outputs ComfyUI's MESH and VOXEL for core's 3D "
                   "nodes (e.g. Bake Texture From Voxel).")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = (MESH_ASSET, CORE_MESH, CORE_VOXEL)
    RETURN_NAMES = ("mesh", "core_mesh", "voxel")
    OUTPUT_TOOLTIPS = (
        "Mesh + PBR voxels (Z-up, inside a unit cube): connect to the mesh nodes or Export GLB.",
        "ComfyUI's MESH (Y-up) for core 3D nodes: holes filled (official decoding tail), no unused vertices, "
        "vertex normals, per-item counts. Geometry only: textures come from Export GLB's core_mesh, or from core's "
        "Bake Texture From Voxel with the voxel output after a UV unwrap.",
        "ComfyUI's VOXEL (the PBR voxels: base colour, metallic, roughness, alpha) for core's Bake Texture From "
        "Voxel or this pack's Export GLB; empty without a material latent.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
                "shape": (SHAPE, {"tooltip": "From Sample Shape."}),
            },
            "optional": {
                "material": (MATERIAL, {"tooltip": "From Sample Material (computed from the same shape). Without "
                                                   "it only the geometry is decoded and nothing can be baked."}),
            },
        }

    def decode(self, pipeline: PipelineHandle, shape: ShapeAsset, material: MaterialAsset | None = None
               ) -> tuple[tuple[MeshAsset, ...], object, object]:
        node = type(self)
        require_asset(pipeline, PipelineHandle, node, "pipeline", "Load TRELLIS.2 Model")
        require_asset(shape, ShapeAsset, node, "shape", "Sample Shape")
        if material is not None:
            require_asset(material, MaterialAsset, node, "material", "Sample Material")
        if material is not None and not _same_voxels(material, shape):
            raise InputError("the material latent was sampled from another shape latent; connect the Sample "
                             "Material node that uses this shape")
        keys = shape.pipeline_type.stage_keys("decode")[: 2 if material is not None else 1]
        progress = StageProgress(1)
        with comfy_errors(), pipeline.models_for(keys):
            decoded = pipeline.pipeline.run_decode(shape.shape, material.material if material is not None else None)
        progress.advance()
        if not decoded.meshes:
            raise InputError("decoding produced no mesh")
        pbr = decoded.pbr if decoded.pbr else [None] * len(decoded.meshes)
        items = tuple(MeshAsset(mesh=m, pbr=p, resolution=decoded.res) for m, p in zip(decoded.meshes, pbr))
        for i, item in enumerate(items):
            if item.mesh.num_faces == 0:
                raise InputError(f"the decoded mesh {i} has no faces; try another seed or a higher resolution")
        return items, decoded_core_mesh(items), voxel_output(items)
