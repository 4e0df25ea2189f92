"""Mesh nodes on ``TRELLIS2_MESH``: fill holes (§8.2), decimate (§9.3), UV unwrap (§9.4).

Each returns new :class:`MeshAsset` objects (the PBR voxels are shared, never changed): ComfyUI caches outputs,
so changing a knob here re-runs only this node and the ones after it.
"""
from __future__ import annotations

import dataclasses
import math

from trellis2_core.errors import InputError
from trellis2_core.postprocess import fill_holes, simplify_mesh, unwrap_uv

from .core_io import mesh_assets
from .runtime import StageProgress, comfy_errors
from .types import MESH_ASSET, MESH_CATEGORY, MESH_IN, MeshAsset

__all__ = ["Trellis2FillHoles", "Trellis2DecimateMesh", "Trellis2UnwrapUV"]

_MESH_IN = (MESH_IN, {"tooltip": "Mesh + PBR voxels from Decode Mesh (or another mesh node), or ComfyUI's MESH "
                                 "(e.g. from core's Load 3D, mesh or TRELLIS.2 nodes: geometry only; Export GLB then "
                                 "needs a voxel input to bake)."})


def _check_unwrapped(items: tuple[MeshAsset, ...], what: str) -> None:
    if any(a.atlas is not None for a in items):
        raise InputError(f"{what} must come before UV Unwrap: changing the geometry would invalidate the UV atlas; "
                         "move UV Unwrap after it")


class Trellis2FillHoles:
    """Close small holes (boundary loops shorter than a perimeter) with fans of triangles."""

    DESCRIPTION = "Fills boundary loops shorter than max_perimeter (official decoding tail, §8.2)."
    CATEGORY = MESH_CATEGORY
    FUNCTION = "fill"
    RETURN_TYPES = (MESH_ASSET,)
    RETURN_NAMES = ("mesh",)
    OUTPUT_TOOLTIPS = ("The mesh with small holes closed.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh": _MESH_IN,
            "max_perimeter": ("FLOAT", {"default": 0.03, "min": 0.0, "max": 10.0, "step": 0.005,
                                        "tooltip": "Holes with a shorter perimeter are filled, in units of the "
                                                   "object's bounding cube (size 1); official 0.03. 0 disables."}),
        }}

    def fill(self, mesh: tuple[MeshAsset, ...], max_perimeter: float) -> tuple[tuple[MeshAsset, ...]]:
        mesh = mesh_assets(mesh, type(self))
        _check_unwrapped(mesh, "Fill Holes")
        progress = StageProgress(len(mesh))
        out = []
        with comfy_errors():
            for item in mesh:
                out.append(dataclasses.replace(item, mesh=fill_holes(item.mesh, float(max_perimeter))))
                progress.advance()
        return (tuple(out),)


class Trellis2DecimateMesh:
    """Reduce the face count by quadric edge collapse, after removing degenerate faces and specks."""

    DESCRIPTION = "Cleans the mesh and simplifies it to about target_faces faces (QEM edge collapse, §9.3)."
    CATEGORY = MESH_CATEGORY
    FUNCTION = "decimate"
    RETURN_TYPES = (MESH_ASSET,)
    RETURN_NAMES = ("mesh",)
    OUTPUT_TOOLTIPS = ("The simplified mesh.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh": _MESH_IN,
            "target_faces": ("INT", {"default": 500_000, "min": 0, "max": 20_000_000, "step": 1000,
                                     "tooltip": "Faces to keep (official demo 500 000). 0 disables simplification; "
                                                "meshes already smaller are left as they are."}),
            "min_component_area": ("FLOAT", {"default": 1e-5, "min": 0.0, "max": 1.0, "step": 1e-5,
                                             "tooltip": "Loose pieces with a smaller surface area (unit-cube "
                                                        "units²) are removed first. 0 disables."}),
        }}

    def decimate(self, mesh: tuple[MeshAsset, ...], target_faces: int, min_component_area: float
                 ) -> tuple[tuple[MeshAsset, ...]]:
        mesh = mesh_assets(mesh, type(self))
        _check_unwrapped(mesh, "Decimate Mesh")
        progress = StageProgress(len(mesh))
        out = []
        with comfy_errors():
            for item in mesh:
                work, moved = simplify_mesh(item.mesh, int(target_faces), float(min_component_area))
                # export projects the texels back onto the surface before the first simplification (§9.5)
                surface = item.surface if item.surface is not None else (item.mesh if moved else None)
                out.append(dataclasses.replace(item, mesh=work, surface=surface))
                progress.advance()
        return (tuple(out),)


class Trellis2UnwrapUV:
    """Cut the mesh into charts and pack them into a texture atlas (Export GLB then bakes into it)."""

    DESCRIPTION = ("Computes the UV atlas now, with its own knobs; Export GLB then bakes the textures into it "
                   "instead of unwrapping itself (§9.4).")
    CATEGORY = MESH_CATEGORY
    FUNCTION = "unwrap"
    RETURN_TYPES = (MESH_ASSET,)
    RETURN_NAMES = ("mesh",)
    OUTPUT_TOOLTIPS = ("The mesh with its UV atlas (vertices split along the chart seams).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh": _MESH_IN,
            "texture_size": ("INT", {"default": 2048, "min": 256, "max": 8192, "step": 256,
                                     "tooltip": "Texture size (pixels per side) the charts are packed for; use the "
                                                "same value in Export GLB."}),
            "padding": ("INT", {"default": 2, "min": 1, "max": 64, "step": 1,
                                "tooltip": "Minimum gap between charts, in texels (prevents colour bleeding)."}),
            "max_cone_angle": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 89.0, "step": 1.0,
                                         "tooltip": "Largest normal deviation (degrees) inside one chart: smaller "
                                                    "gives more, flatter charts (official 60)."}),
        }}

    def unwrap(self, mesh: tuple[MeshAsset, ...], texture_size: int, padding: int, max_cone_angle: float
               ) -> tuple[tuple[MeshAsset, ...]]:
        mesh = mesh_assets(mesh, type(self))
        _check_unwrapped(mesh, "UV Unwrap")
        progress = StageProgress(len(mesh))
        out = []
        with comfy_errors():
            for item in mesh:
                atlas = unwrap_uv(item.mesh, int(texture_size), padding=int(padding),
                                  max_cone_angle=math.radians(float(max_cone_angle)))
                out.append(dataclasses.replace(item, atlas=atlas))
                progress.advance()
        return (tuple(out),)
