"""Bake PBR voxels onto the user's own mesh and write it as a GLB with the input's geometry (spec §11, beyond it).

The input's UVs are baked onto (unwrapping only a mesh without UVs, or on request), its vertices and faces are
written back unchanged in the input frame, and ``TEXCOORD_0`` is patched so a reader gets the input's UVs back bit
for bit (:mod:`.glb_exact`). Each covered texel is baked by trilinear sampling of the voxels at the texel's surface
point in the working frame (the voxels' frame); the rest is seam-filled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cancel import checkpoint
from ..errors import InputError
from ..mesh.checks import check_int
from ..mesh.types import Mesh, PbrVoxels
from ..postprocess.bake import bake_pbr_textures
from ..postprocess.glb import check_output_path, write_glb
from ..postprocess.unwrap import unwrap_uv
from .frame import PreparedMesh
from .glb_exact import patch_accessor, texcoords_for
from .mesh_io import InputMesh

__all__ = ["bake_onto_mesh", "BakeReport", "UNWRAP_MODES", "check_unwrap"]

log = logging.getLogger(__name__)

UNWRAP_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class BakeReport:
    """What :func:`bake_onto_mesh` wrote."""

    path: Path
    kept_uvs: bool  # the input's UVs were used (False: the mesh was unwrapped)
    coverage: float  # fraction of texels covered by a triangle (the rest is seam fill)
    faces: int
    vertices: int  # written vertices (more than the input's when unwrapping split seams)


def _y_to_z_up(p: torch.Tensor) -> torch.Tensor:
    """Input (Y-up) → the GLB writer's model frame (Z-up), ``(x, y, z) → (x, −z, y)``: exact (a sign and a swap)."""
    return torch.stack((p[:, 0], -p[:, 2], p[:, 1]), dim=1)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` float32 (zero-area neighbourhoods get +Z)."""
    v = vertices.to(torch.float64)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    acc = torch.zeros_like(v).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
    length = acc.norm(dim=1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return torch.where(length > 1e-30, acc / length.clamp_min(1e-30), fallback).to(torch.float32)


def _layout(src: InputMesh, unwrap: str, texture_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """``(vmap [V'] int64 into the input vertices, faces [F, 3], raster uvs [V', 2], kept_uvs)``."""
    faces = torch.from_numpy(src.faces)
    if src.uvs is not None and unwrap != "always":
        uv = torch.from_numpy(np.asarray(src.uvs, dtype=np.float64))
        outside = float(((uv < 0) | (uv > 1)).any(dim=1).double().mean())
        if outside > 0:
            log.warning("%s: %.1f%% of the UVs lie outside [0, 1] (tiling); only the [0, 1] square is baked",
                        src.name, 100 * outside)
        raster = torch.stack((uv[:, 0], 1.0 - uv[:, 1]), dim=1).to(torch.float32)  # row 0 = top = glTF v 0
        return torch.arange(src.vertices.shape[0]), faces, raster, True
    if unwrap == "never":
        raise InputError(f"{src.name}: the mesh has no UVs and unwrap='never'; unwrap it first or use "
                         "unwrap='auto'")
    vertices = torch.from_numpy(np.asarray(src.vertices, dtype=np.float32))
    atlas = unwrap_uv(Mesh(vertices, faces.to(torch.int32)), texture_size=texture_size)
    return atlas.vmap, atlas.faces.to(torch.int64), atlas.uvs, False


def _trimesh_uv(raster_uv: torch.Tensor) -> np.ndarray:
    """A new layout's UVs in trimesh's convention (``v`` up)."""
    uv = raster_uv.double().numpy()
    return np.stack((uv[:, 0], 1.0 - uv[:, 1]), axis=1)


def check_unwrap(unwrap: str, label: str = "unwrap") -> str:
    """``unwrap`` if it is one of :data:`UNWRAP_MODES`."""
    if unwrap not in UNWRAP_MODES:
        raise InputError(f"{label} must be one of {', '.join(UNWRAP_MODES)}, got {unwrap!r}")
    return unwrap


def bake_onto_mesh(src: InputMesh, prepared: PreparedMesh, pbr: PbrVoxels, output: str | Path, *,
                   texture_size: int = 2048, unwrap: str = "auto", texture_format: str = "png",
                   double_sided: bool = True) -> BakeReport:
    """Bake ``pbr`` (voxels in ``prepared``'s working frame) onto ``src`` and write ``output`` (GLB, atomically).

    Args:
        src: the mesh as given (its vertices, faces and UVs are written back unchanged).
        prepared: ``src`` normalised by :func:`~.frame.preprocess_mesh` (the frame the voxels live in).
        texture_size: texture side in texels (64..8192).
        unwrap: 'auto' (keep the input's UVs, unwrap only a mesh without), 'always', or 'never' (error if none).
    """
    check_unwrap(unwrap)
    texture_size = check_int(texture_size, "texture_size", 64, 8192)
    target = check_output_path(output)
    if prepared.vertices.shape[0] != src.vertices.shape[0] or prepared.faces.shape != src.faces.shape:
        raise InputError(f"{src.name}: the PBR voxels were computed for another mesh ({prepared.vertices.shape[0]} "
                         f"vertices, {prepared.faces.shape[0]} faces); encode this mesh and sample its material")
    vmap, faces, raster_uv, kept = _layout(src, unwrap, texture_size)
    checkpoint("texture baking")
    dev = pbr.attrs.device  # bake where the voxels are (the GPU when the pipeline ran there)
    work = prepared.vertices.to(torch.float32)[vmap]  # the voxels' frame
    baked = bake_pbr_textures(raster_uv.to(dev, torch.float32), faces.to(dev), work.to(dev), pbr, texture_size)
    in_vertices = torch.from_numpy(np.asarray(src.vertices, dtype=np.float64))[vmap]
    normals = _vertex_normals(in_vertices, faces)
    file_uv = texcoords_for(np.asarray(src.uvs) if kept else _trimesh_uv(raster_uv))
    checkpoint("GLB writing")
    write_glb(target, _y_to_z_up(in_vertices), faces, _y_to_z_up(normals.double()).float(), raster_uv,
              baked.base_color, baked.metallic_roughness, double_sided=double_sided, texture_format=texture_format,
              finish=lambda data: patch_accessor(data, "TEXCOORD_0", file_uv))
    return BakeReport(path=target, kept_uvs=kept, coverage=float(baked.coverage), faces=int(faces.shape[0]),
                      vertices=int(vmap.shape[0]))
