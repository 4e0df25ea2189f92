"""Our meshes and PBR voxels in ComfyUI core's ``MESH`` / ``VOXEL`` tensor layout, and back (no ComfyUI import).

Core (0.33.0, ``comfy_api/latest/_util/geometry_types.py``) batches meshes as zero-padded ``[B, N, ...]`` tensors in
glTF's Y-up frame with per-item ``vertex_counts`` / ``face_counts``; ``uvs`` / ``normals`` are 1:1 with the
vertices, ``texture`` (base colour) and ``metallic_roughness`` (R unused, G roughness, B metallic) are float
``[B, H, W, 3]`` images in [0, 1], rows in glTF order like ours. Its ``VOXEL`` (what core's TRELLIS.2 texture decode
outputs and ``BakeTextureFromVoxel`` reads) holds ``data`` = coords ``[N, 4]`` = ``(b, x, z, R−1−y)`` (the Y-up image
of our ``(x, y, z)`` voxel indices), ``voxel_colors`` = ``[N, 6]`` attributes in our channel layout and ``resolution``
R. The node bridge wraps these tensors into core's classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..mesh.types import Mesh, PbrVoxels, TexturedMesh, y_up_to_z_up, z_up_to_y_up
from .clean import remove_unreferenced_vertices
from .export import vertex_normals
from .holes import DEFAULT_MAX_HOLE_PERIMETER, fill_holes

__all__ = ["CoreMeshTensors", "CoreVoxelTensors", "core_mesh_tensors", "core_geometry", "meshes_from_core",
           "core_voxel_tensors", "pbr_from_core_voxel"]


@dataclass(frozen=True)
class CoreMeshTensors:
    """The fields of core's ``MESH`` (keyword arguments of its constructor), Y-up, padded with per-item counts."""

    vertices: Tensor  # [B, V, 3] float32
    faces: Tensor  # [B, F, 3] int64
    vertex_counts: Tensor  # [B] int64
    face_counts: Tensor  # [B] int64
    normals: Tensor  # [B, V, 3] float32
    uvs: Tensor | None = None  # [B, V, 2] float32
    texture: Tensor | None = None  # [B, T, T, 3] float32 base colour
    metallic_roughness: Tensor | None = None  # [B, T, T, 3] float32 (0, roughness, metallic)

    def kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("vertices", "faces", "vertex_counts", "face_counts", "normals", "uvs",
                                               "texture", "metallic_roughness")}


@dataclass(frozen=True)
class CoreVoxelTensors:
    """The fields of core's ``VOXEL``: ``data`` coords ``[N, 4]`` (b, x, z, R−1−y), ``voxel_colors`` ``[N, 6]``."""

    data: Tensor  # [N, 4] int32
    voxel_colors: Tensor  # [N, 6] float32
    resolution: int


def _pad(rows: Sequence[Tensor], width: int, dtype: torch.dtype) -> Tensor:
    out = torch.zeros(len(rows), max(r.shape[0] for r in rows), width, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r.to(dtype)
    return out


def core_mesh_tensors(items: Sequence[Mesh | TexturedMesh]) -> CoreMeshTensors:
    """Core ``MESH`` fields of a batch: geometry ``Mesh`` items (compacted, area-weighted normals) or textured
    items (their UVs, normals and textures; every texture of the batch must have one size)."""
    if not items:
        raise InputError("no mesh to convert to ComfyUI's MESH")
    textured = [isinstance(m, TexturedMesh) for m in items]
    if any(textured) and not all(textured):
        raise InputError("a ComfyUI MESH batch must be all textured or all untextured meshes")
    verts, faces, normals, uvs, tex, mr = [], [], [], [], [], []
    for item in items:
        if isinstance(item, TexturedMesh):
            v, f, n = item.vertices, item.faces, item.normals
            uvs.append(item.uvs.detach().float().cpu())
            tex.append(item.base_color[..., :3].detach().cpu().float() / 255.0)
            mr.append(item.metallic_roughness.detach().cpu().float() / 255.0)
        else:
            compact, _ = remove_unreferenced_vertices(item)
            v, f, n = compact.vertices, compact.faces, vertex_normals(compact)
        verts.append(z_up_to_y_up(v.detach().float().cpu()))
        faces.append(f.detach().cpu().long())
        normals.append(z_up_to_y_up(n.detach().float().cpu()))
    if tex and len({t.shape for t in tex}) > 1:
        raise InputError(f"textures of one ComfyUI MESH batch must have one size, got {sorted({t.shape[0] for t in tex})}")
    return CoreMeshTensors(
        vertices=_pad(verts, 3, torch.float32), faces=_pad(faces, 3, torch.int64),
        vertex_counts=torch.tensor([v.shape[0] for v in verts], dtype=torch.int64),
        face_counts=torch.tensor([f.shape[0] for f in faces], dtype=torch.int64),
        normals=_pad(normals, 3, torch.float32), uvs=_pad(uvs, 2, torch.float32) if uvs else None,
        texture=torch.stack(tex) if tex else None, metallic_roughness=torch.stack(mr) if mr else None)


def core_geometry(meshes: Sequence[Mesh], max_hole_perimeter: float = DEFAULT_MAX_HOLE_PERIMETER
                  ) -> CoreMeshTensors:
    """Decoded meshes as core ``MESH`` fields after the decoding tail (§8.2 hole filling), compacted."""
    return core_mesh_tensors([fill_holes(m, max_hole_perimeter) for m in meshes])


def meshes_from_core(vertices: Any, faces: Any, vertex_counts: Any = None, face_counts: Any = None,
                     what: str = "MESH") -> list[Mesh]:
    """Core ``MESH`` geometry (``[B, V, 3]`` Y-up, or lists of ``[V, 3]``) as our Z-up meshes, one per item, cut to
    their counts and without unreferenced vertices."""
    if isinstance(vertices, (list, tuple)):
        pairs = list(zip(vertices, faces))
    else:
        if not isinstance(vertices, Tensor) or not isinstance(faces, Tensor):
            raise InputError(f"{what}: vertices and faces must be tensors, got {type(vertices).__name__}")
        if vertices.dim() == 2:
            vertices, faces = vertices[None], faces[None]
        if vertices.dim() != 3 or faces.dim() != 3 or vertices.shape[0] != faces.shape[0]:
            raise InputError(f"{what}: expected vertices [B, V, 3] and faces [B, F, 3], got "
                             f"{list(vertices.shape)} and {list(faces.shape)}")
        pairs = []
        for i in range(vertices.shape[0]):
            nv = int(vertex_counts[i]) if vertex_counts is not None else vertices.shape[1]
            nf = int(face_counts[i]) if face_counts is not None else faces.shape[1]
            pairs.append((vertices[i, :nv], faces[i, :nf]))
    out = []
    for i, (v, f) in enumerate(pairs):
        if v.dim() != 2 or v.shape[-1] != 3 or f.dim() != 2 or f.shape[-1] != 3:
            raise InputError(f"{what} item {i}: expected vertices [V, 3] and faces [F, 3], got {list(v.shape)} and "
                             f"{list(f.shape)}")
        v = y_up_to_z_up(v.detach().float().cpu()).contiguous()
        f = f.detach().cpu().to(torch.int32).contiguous()
        mesh, _ = remove_unreferenced_vertices(Mesh(v, f))
        if mesh.num_faces == 0:
            raise InputError(f"{what} item {i} has no faces")
        out.append(mesh)
    return out


def core_voxel_tensors(pbrs: Sequence[PbrVoxels]) -> CoreVoxelTensors:
    """Our PBR voxels of a batch as core ``VOXEL`` fields (one resolution for the whole batch)."""
    if not pbrs:
        raise InputError("no PBR voxels to convert to ComfyUI's VOXEL")
    res = {p.resolution for p in pbrs}
    if len(res) != 1:
        raise InputError(f"a ComfyUI VOXEL batch needs one resolution, got {sorted(res)}")
    r = res.pop()
    rows = []
    for b, p in enumerate(pbrs):
        c = p.coords.detach().cpu().to(torch.int32)
        batch = torch.full((c.shape[0], 1), b, dtype=torch.int32)
        rows.append(torch.cat((batch, c[:, :1], c[:, 2:3], (r - 1) - c[:, 1:2]), dim=1))
    attrs = torch.cat([p.attrs.detach().cpu().float() for p in pbrs])
    return CoreVoxelTensors(torch.cat(rows), attrs, r)


def pbr_from_core_voxel(data: Any, voxel_colors: Any, resolution: Any, batch_size: int) -> list[PbrVoxels]:
    """Core ``VOXEL`` fields (coords ``[N, 4]`` (b, x, z, R−1−y) or ``[N, 3]`` for one item) as our PBR voxels of
    ``batch_size`` items; needs the 6 PBR channels of core's TRELLIS.2 texture decode."""
    if not isinstance(data, Tensor) or not isinstance(voxel_colors, Tensor):
        raise InputError("VOXEL: expected coords and colours as tensors (from a TRELLIS.2 texture decode)")
    if voxel_colors.dim() != 2 or voxel_colors.shape[1] != 6:
        raise InputError(f"VOXEL: baking needs the 6 PBR channels (base colour, metallic, roughness, alpha) of a "
                         f"TRELLIS.2 texture decode, got colours {list(voxel_colors.shape)}")
    if data.dim() != 2 or data.shape[1] not in (3, 4) or data.shape[0] != voxel_colors.shape[0]:
        raise InputError(f"VOXEL: coords must be [N, 4] or [N, 3] with one row per colour, got {list(data.shape)}")
    r = int(resolution)
    coords = data.detach().cpu().to(torch.int64)
    batch = coords[:, 0] if coords.shape[1] == 4 else torch.zeros(coords.shape[0], dtype=torch.int64)
    xyz = coords[:, -3:]
    ours = torch.stack((xyz[:, 0], (r - 1) - xyz[:, 2], xyz[:, 1]), dim=1).to(torch.int32)
    attrs = voxel_colors.detach().cpu().float()
    items = int(batch.max()) + 1 if batch.numel() else 1
    if items not in (1, batch_size):
        raise InputError(f"VOXEL holds {items} items but the mesh batch has {batch_size}: connect the voxels decoded "
                         "with this mesh")
    out = []
    for b in range(batch_size):
        sel = batch == (b if items > 1 else 0)  # one voxel set serves every mesh of the batch
        out.append(PbrVoxels(ours[sel].contiguous(), attrs[sel].contiguous(), r))
    return out
