"""Flexible dual grid → triangle mesh (spec §8.1; o-voxel ``flexible_dual_grid_to_mesh`` at inference).

Every active voxel carries one dual vertex. A flagged grid edge (``intersected[v, a]``: the edge parallel to axis
``a`` at the max corner of voxel ``v`` in the other two axes) is surrounded by four voxels; when all four exist
they form a quad, split into two triangles by the ``split_weight`` rule. Voxel lookups use a sorted array of
packed coordinate keys and ``searchsorted`` (no hash table, no compiled code), vectorised over all voxels.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import InputError

from .types import Mesh

__all__ = ["flexible_dual_grid_to_mesh", "QUAD_OFFSETS"]

# §8.1: the four voxels around the edge flagged on axis a, as offsets from the flagging voxel, in cyclic order.
QUAD_OFFSETS: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)),  # axis x
    ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)),  # axis y
    ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)),  # axis z
)

AabbLike = Sequence[Sequence[float]] | Tensor


def _aabb_tensor(aabb: AabbLike, device: torch.device) -> tuple[Tensor, Tensor]:
    box = torch.as_tensor(aabb, dtype=torch.float32, device=device)
    if box.shape != (2, 3):
        raise InputError(f"aabb must be ((xmin, ymin, zmin), (xmax, ymax, zmax)), got shape {list(box.shape)}")
    return box[0], box[1]


def _grid_tensor(grid_size: int | Sequence[int], device: torch.device) -> Tensor:
    g = torch.as_tensor(grid_size, dtype=torch.int64, device=device).reshape(-1)
    if g.numel() == 1:
        g = g.expand(3)
    if g.numel() != 3 or bool((g <= 0).any()):
        raise InputError(f"grid_size must be a positive int or 3 positive ints, got {grid_size!r}")
    return g


def _check_inputs(coords: Tensor, dual_vertices: Tensor, intersected: Tensor, split_weight: Tensor) -> Tensor:
    n = coords.shape[0] if coords.dim() == 2 else -1
    if coords.dim() != 2 or coords.shape[1] != 3 or coords.dtype.is_floating_point:
        raise InputError(f"coords must be an integer tensor [N, 3] (x, y, z), got {coords.dtype} {list(coords.shape)}")
    if dual_vertices.shape != (n, 3) or not dual_vertices.dtype.is_floating_point:
        raise InputError(f"dual_vertices must be float [{n}, 3], got {dual_vertices.dtype} {list(dual_vertices.shape)}")
    if intersected.shape != (n, 3):
        raise InputError(f"intersected must be bool [{n}, 3], got {intersected.dtype} {list(intersected.shape)}")
    if split_weight.shape not in ((n, 1), (n,)):
        raise InputError(f"split_weight must be [{n}, 1], got {list(split_weight.shape)}")
    return split_weight.reshape(n)


def _lookup(sorted_keys: Tensor, order: Tensor, query: Tensor) -> Tensor:
    """Row index of each packed ``query`` key, or -1 when absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == query, order[pos], -1)


def flexible_dual_grid_to_mesh(
    coords: Tensor,  # [N, 3] int (x, y, z)
    dual_vertices: Tensor,  # [N, 3] float, offset from the voxel's min corner in voxel units
    intersected: Tensor,  # [N, 3] bool (uint8 accepted)
    split_weight: Tensor,  # [N, 1] float, positive
    grid_size: int | Sequence[int],
    aabb: AabbLike = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)),
) -> Mesh:
    """Mesh of a flexible dual grid, exactly as the official inference path (§8.1).

    Vertices: one per voxel in row order, ``(coord + dual_vertex) * voxel_size + aabb_min`` with
    ``voxel_size = (aabb_max - aabb_min) / grid_size``. Faces: for each (voxel row, axis) in row-major order whose
    flag is set and whose four quad voxels all exist (lookups outside ``[0, grid_size)`` are absent), two triangles:
    ``(q0,q1,q2), (q0,q2,q3)`` if ``w0·w2 > w1·w3`` else ``(q0,q1,q3), (q3,q1,q2)``, with ``w = split_weight``.
    """
    w = _check_inputs(coords, dual_vertices, intersected, split_weight)
    device = coords.device
    lo, hi = _aabb_tensor(aabb, device)
    grid = _grid_tensor(grid_size, device)
    voxel_size = (hi - lo) / grid.to(torch.float32)  # [3]
    vertices = (coords.to(torch.float32) + dual_vertices.to(torch.float32)) * voxel_size + lo  # [N, 3]

    n = coords.shape[0]
    if n == 0:
        return Mesh.unchecked(vertices.contiguous(), torch.empty((0, 3), dtype=torch.int32, device=device))
    c = coords.to(torch.int64)
    if bool((c < 0).any()):
        raise InputError("coords must be non-negative grid indices")

    # Packed keys with one spare slot per axis so that coord + 1 never aliases another voxel; packing is linear,
    # so a corner's key is the voxel's key plus a per-(axis, corner) constant.
    radix = c.amax(dim=0) + 2  # [3]
    keys = (c[:, 0] * radix[1] + c[:, 1]) * radix[2] + c[:, 2]  # [N]
    sorted_keys, order = torch.sort(keys)

    pairs = intersected.to(torch.bool).nonzero()  # [L0, 2] (voxel row, axis), row-major = official quad order
    row, axis = pairs[:, 0], pairs[:, 1]
    offsets = torch.tensor(QUAD_OFFSETS, dtype=torch.int64, device=device)  # [3 axes, 4 corners, 3]
    delta = (offsets[..., 0] * radix[1] + offsets[..., 1]) * radix[2] + offsets[..., 2]  # [3, 4]
    # corner 0 is the flagging voxel itself; look up the other three
    found = _lookup(sorted_keys, order, keys[row].unsqueeze(1) + delta[axis, 1:])  # [L0, 3]
    quad = torch.cat((row.unsqueeze(1), found), dim=1)  # [L0, 4]
    # The official hash answers "invalid" for lookups outside [0, grid_size): mask corners stepping past the grid.
    room = c[row] + 1 < grid  # [L0, 3] may step +1 along each axis
    outside = (offsets[axis].bool() & ~room.unsqueeze(1)).any(dim=-1)  # [L0, 4]
    quad = quad[((quad >= 0) & ~outside).all(dim=1)]  # [L, 4]

    wq = w[quad]  # [L, 4]
    first = (wq[:, 0] * wq[:, 2] > wq[:, 1] * wq[:, 3]).unsqueeze(1)  # [L, 1]
    q0, q1, q2, q3 = quad.unbind(dim=1)
    tri_a = torch.where(first, torch.stack((q0, q1, q2), 1), torch.stack((q0, q1, q3), 1))
    tri_b = torch.where(first, torch.stack((q0, q2, q3), 1), torch.stack((q3, q1, q2), 1))
    faces = torch.stack((tri_a, tri_b), dim=1).reshape(-1, 3).to(torch.int32)  # [2L, 3], two rows per quad
    return Mesh.unchecked(vertices.contiguous(), faces)
