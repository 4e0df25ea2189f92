"""Triangle mesh → flexible dual grid (official ``o_voxel.convert.mesh_to_flexible_dual_grid``, spec §11).

Output: the voxels the surface crosses, in the official first-touch row order, each with a dual vertex (the QEF
minimiser inside the voxel) and three flags telling whether the surface crosses the voxel's edge along x, y, z
that starts at its minimum corner. Stages, each in its own module: scan-line crossings (``fdg_scan``; creates the
voxels, their crossing means and plane quadrics), face quadrics (``fdg_faces``), boundary quadrics
(``fdg_boundary``), QEF solve (``qef``). The computation is vectorised PyTorch and runs on the device of the
input tensors (float64 is needed for the scan-line arithmetic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .fdg_accumulate import VoxelTable, ordered_add
from .fdg_boundary import boundary_edges, boundary_walks
from .fdg_faces import face_overlaps
from .fdg_quadric import plane_quadrics, triangle_normals
from .fdg_scan import scan_crossings
from .qef import regularize, solve_dual_vertices

__all__ = ["FlexibleDualGrid", "mesh_to_flexible_dual_grid", "UNIT_AABB"]

UNIT_AABB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class FlexibleDualGrid:
    """A flexible dual grid at ``grid_size``: rows in the official first-touch order.

    ``dual_vertices`` are in aabb-min-relative world units (not voxel-local): the encoder's input is
    ``dual_vertices · grid − coords`` (:meth:`local_offsets`).
    """

    coords: Tensor  # [N, 3] int32 voxel indices
    dual_vertices: Tensor  # [N, 3] float32, aabb-min-relative
    intersected: Tensor  # [N, 3] bool, per axis x, y, z
    grid_size: tuple[int, int, int]

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def local_offsets(self) -> Tensor:
        """Dual vertices relative to each voxel's minimum corner, in voxel units ``[N, 3]`` float32 (≈ [0, 1])."""
        g = torch.tensor(self.grid_size, dtype=torch.float32, device=self.coords.device)
        if len(set(self.grid_size)) == 1:
            return self.dual_vertices * self.grid_size[0] - self.coords.to(torch.float32)
        return self.dual_vertices * g - self.coords.to(torch.float32)


def _grid3(grid_size: int | Sequence[int]) -> tuple[int, int, int]:
    g = (grid_size,) * 3 if isinstance(grid_size, int) else tuple(int(s) for s in grid_size)
    if len(g) != 3 or any(s < 1 for s in g):
        raise InputError(f"grid_size must be a positive int or three positive ints, got {grid_size!r}")
    return g  # type: ignore[return-value]


def _check_mesh(vertices: Tensor, faces: Tensor) -> None:
    if not isinstance(vertices, Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise InputError(f"vertices must be a [V, 3] tensor, got {getattr(vertices, 'shape', type(vertices))}")
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise InputError(f"faces must be a [F, 3] integer tensor, got {getattr(faces, 'shape', type(faces))}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise InputError(f"faces index vertices {int(faces.min())}..{int(faces.max())} but there are "
                         f"{vertices.shape[0]} vertices")


@torch.no_grad()
def mesh_to_flexible_dual_grid(vertices: Tensor, faces: Tensor, grid_size: int | Sequence[int],
                               aabb: Sequence[Sequence[float]] = UNIT_AABB, *, face_weight: float = 1.0,
                               boundary_weight: float = 1.0, regularization_weight: float = 0.1,
                               faces_per_chunk: int = 65536) -> FlexibleDualGrid:
    """Convert a triangle mesh into its flexible dual grid, as the official converter does.

    Args:
        vertices: ``[V, 3]`` positions (cast to float32, as the official wrapper does), inside ``aabb``.
        faces: ``[F, 3]`` vertex indices; degenerate and repeated faces are processed like any other.
        grid_size: voxels per axis.
        aabb: ``(min xyz, max xyz)`` of the grid.
        face_weight: enables the face quadrics when ``> 0`` (they are not scaled by it, as official).
        boundary_weight: scale of the boundary-edge quadrics (disabled when ``≤ 0``).
        regularization_weight: weight of the pull towards the mean crossing point (disabled when ``≤ 0``).
        faces_per_chunk: triangles scanned per batch (bounds the memory of the crossing events).
    """
    _check_mesh(vertices, faces)
    grid = _grid3(grid_size)
    device = vertices.device
    box = torch.tensor(aabb, dtype=torch.float32, device=device)
    if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
        raise InputError(f"aabb must be ((min x, y, z), (max x, y, z)) with max > min, got {aabb!r}")
    voxel_size = (box[1] - box[0]) / torch.tensor(grid, dtype=torch.int32, device=device)  # float32
    verts = vertices.to(torch.float32) - box[0]
    faces = faces.to(torch.int64)
    tris = verts[faces]  # [F, 3, 3]
    normals = triangle_normals(tris)
    quadrics = plane_quadrics(tris, normals)  # [F, 10]
    vs_floats = tuple(float(s) for s in voxel_size.tolist())

    table = VoxelTable(grid, device)
    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for start in range(0, faces.shape[0], max(1, faces_per_chunk)):
        ids = torch.arange(start, min(start + faces_per_chunk, faces.shape[0]), device=device)
        ev = scan_crossings(tris[ids], ids, vs_floats, grid)
        rows = table.touch(ev.voxel)
        chunks.append((rows, ev.point, ev.axis, ev.tri))
    n = len(table)
    means = torch.zeros(n, 3, dtype=torch.float32, device=device)
    counts = torch.zeros(n, dtype=torch.float32, device=device)
    flags = torch.zeros(n, 3, dtype=torch.bool, device=device)
    q = torch.zeros(n, 10, dtype=torch.float32, device=device)
    for rows, point, axis, tri in chunks:
        ordered_add(means, rows, point)
        ordered_add(q, rows, quadrics[tri])
        counts += torch.bincount(rows, minlength=n).to(torch.float32)
        hit = axis >= 0
        flags[rows[hit], axis[hit]] = True
    del chunks

    if float(torch.tensor(face_weight, dtype=torch.float32)) > 0:
        tri, rows = face_overlaps(tris, normals, voxel_size, table)
        ordered_add(q, rows, quadrics[tri])
    bw = torch.tensor(boundary_weight, dtype=torch.float32)
    if float(bw) > 0:
        edges = boundary_edges(faces, int(verts.shape[0]))
        seg, rows, seg_q = boundary_walks(verts, edges, voxel_size, table)
        ordered_add(q, rows, bw * seg_q[seg])
    q = regularize(q, means, counts, regularization_weight)
    coords = table.coords()
    dual = solve_dual_vertices(q, coords, voxel_size) if n else torch.empty(0, 3, device=device)
    return FlexibleDualGrid(coords=coords, dual_vertices=dual, intersected=flags, grid_size=grid)
