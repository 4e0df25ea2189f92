"""Our mesh sockets ⇄ ComfyUI core's ``MESH`` / ``VOXEL`` / ``FILE_3D`` objects (layouts: the library's
``postprocess.comfy_layout``; core's classes: :mod:`.comfy_bridge`)."""
from __future__ import annotations

from typing import Any, Sequence

from trellis2_core.errors import InputError
from trellis2_core.mesh.types import TexturedMesh
from trellis2_core.postprocess.comfy_layout import (
    core_geometry, core_mesh_tensors, core_voxel_tensors, meshes_from_core, pbr_from_core_voxel,
)

from . import comfy_bridge as bridge
from .checks import node_title
from .types import MeshAsset

__all__ = ["mesh_assets", "with_voxels", "decoded_core_mesh", "textured_core_mesh", "voxel_output"]


def mesh_assets(value: Any, node: type, name: str = "mesh") -> tuple[MeshAsset, ...]:
    """A ``TRELLIS2_MESH`` tuple as it is, or a core ``MESH`` (Load 3D, core decode, core mesh nodes) as geometry
    items without PBR voxels."""
    if isinstance(value, tuple) and value and all(isinstance(v, MeshAsset) for v in value):
        return value
    if hasattr(value, "vertices") and hasattr(value, "faces"):
        meshes = meshes_from_core(value.vertices, value.faces, getattr(value, "vertex_counts", None),
                                  getattr(value, "face_counts", None), what=f"{node_title(node)}: {name}")
        return tuple(MeshAsset(mesh=m, pbr=None, resolution=0) for m in meshes)
    raise InputError(f"{node_title(node)}: '{name}' must come from Decode Mesh, a TRELLIS.2 mesh node or a ComfyUI "
                     f"MESH output, got {type(value).__name__}")


def with_voxels(items: Sequence[MeshAsset], voxel: Any, node: type) -> tuple[MeshAsset, ...]:
    """Items without PBR voxels take them from a ``VOXEL`` input (ours or core's TRELLIS.2 texture decode)."""
    if voxel is None or all(item.pbr is not None for item in items):
        return tuple(items)
    try:
        pbrs = pbr_from_core_voxel(getattr(voxel, "data", None), getattr(voxel, "voxel_colors", None),
                                   getattr(voxel, "resolution", None), len(items))
    except (InputError, TypeError, ValueError) as err:
        raise InputError(f"{node_title(node)}: voxel: {err}") from err
    return tuple(item if item.pbr is not None else MeshAsset(item.mesh, pbr, pbr.resolution, item.atlas, item.surface)
                 for item, pbr in zip(items, pbrs))


def decoded_core_mesh(items: Sequence[MeshAsset]) -> Any:
    """Core ``MESH`` of decoded meshes: hole-filled (§8.2), compacted, with normals and per-item counts."""
    return bridge.core_mesh(core_geometry([a.mesh for a in items]))


def textured_core_mesh(assets: Sequence[TexturedMesh]) -> Any:
    """Core ``MESH`` of exported meshes: exactly what the GLBs hold (UVs, normals, base colour, metallic-roughness)."""
    return bridge.core_mesh(core_mesh_tensors(list(assets)))


def voxel_output(items: Sequence[MeshAsset]) -> Any:
    """Core ``VOXEL`` of the batch's PBR voxels (None without a material latent)."""
    pbrs = [a.pbr for a in items]
    if any(p is None for p in pbrs):
        return None
    return bridge.core_voxel(core_voxel_tensors(pbrs))
