"""Boundary quadrics: open edges and the voxels they pass (stage 3 of mesh → flexible dual grid, spec §11).

An edge is a boundary edge when exactly one face uses it, counting each face's three edges as sorted vertex-index
pairs (so an unwelded mesh is all boundary, and a repeated face changes the counts). Boundary edges are visited
in ascending ``(min index, max index)`` order; each adds ``boundary_weight · Q`` (``Q`` = squared distance to the
edge's line) to every existing voxel that a 3-D DDA walk from the first to the second endpoint passes. The walk
is the official one, step by step in float64 (``tMax += tDelta``), vectorised over all edges at once.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fdg_accumulate import VoxelTable
from .fdg_quadric import segment_quadrics

__all__ = ["boundary_edges", "boundary_walks"]

_MIN_LENGTH = float(torch.tensor(1.0e-6, dtype=torch.float32))  # the official threshold, a float literal


def boundary_edges(faces: Tensor, num_vertices: int) -> Tensor:
    """Boundary edges ``[S, 2]`` int64 (min, max vertex index) in ascending order."""
    e = torch.stack((faces, faces.roll(-1, dims=1)), dim=2).reshape(-1, 2).to(torch.int64)
    e = torch.sort(e, dim=1).values
    keys, counts = torch.unique(e[:, 0] * num_vertices + e[:, 1], sorted=True, return_counts=True)
    keys = keys[counts == 1]
    return torch.stack((torch.div(keys, num_vertices, rounding_mode="floor"), keys % num_vertices), dim=1)


def _walk_start(v0: Tensor, unit: Tensor, vs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Start voxel, step signs, first crossing ``tMax`` and spacing ``tDelta`` (float64) per segment."""
    start = torch.floor(v0 / vs).to(torch.int64)
    step = torch.where(unit > 0, 1, -1)
    border = vs * (start + (step > 0).to(torch.int64)).to(torch.float32)  # float32 product
    still = unit == 0
    safe = torch.where(still, torch.ones_like(unit), unit)
    t_max = torch.where(still, torch.inf, (border - v0).to(torch.float64) / safe)
    t_delta = torch.where(still, torch.inf, vs.to(torch.float64) / safe.abs())
    return start, step, t_max, t_delta


def boundary_walks(vertices: Tensor, edges: Tensor, voxel_size: Tensor, table: VoxelTable
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(segment [P], row [P], Q [S, 10])``: each boundary segment's existing voxels in official order.

    ``vertices [V, 3]`` float32 aabb-relative, ``edges [S, 2]`` from :func:`boundary_edges`.
    """
    device = vertices.device
    v0, v1 = vertices[edges[:, 0]], vertices[edges[:, 1]]
    q, unit, length = segment_quadrics(v0, v1)
    live = torch.nonzero(~(length < _MIN_LENGTH)).squeeze(1)
    grid = torch.tensor(table.grid, dtype=torch.int64, device=device)
    seg_out, vox_out = [], []
    if live.numel():
        current, step, t_max, t_delta = _walk_start(v0[live], unit[live], voxel_size)
        seg, limit = live, length[live]
        seg_out.append(seg)
        vox_out.append(current)
        while seg.numel():
            # official axis choice: x if tMax.x < tMax.y and tMax.x < tMax.z, ... ties go to the later axis
            ax = torch.where(t_max[:, 0] < t_max[:, 1], torch.where(t_max[:, 0] < t_max[:, 2], 0, 2),
                             torch.where(t_max[:, 1] < t_max[:, 2], 1, 2))
            t_axis = t_max.gather(1, ax[:, None]).squeeze(1)
            go = ~(t_axis > limit)
            seg, limit, ax = seg[go], limit[go], ax[go]
            current, step, t_max, t_delta = current[go], step[go], t_max[go], t_delta[go]
            if not seg.numel():
                break
            rows = torch.arange(seg.shape[0], device=device)
            current = current.clone()
            current[rows, ax] += step[rows, ax]
            t_max = t_max.clone()
            t_max[rows, ax] = t_max[rows, ax] + t_delta[rows, ax]
            seg_out.append(seg)
            vox_out.append(current)
    if not seg_out:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty, q
    seg_all, vox_all = torch.cat(seg_out), torch.cat(vox_out)
    inside = ((vox_all >= 0) & (vox_all < grid)).all(dim=1)
    seg_all, vox_all = seg_all[inside], vox_all[inside]
    rows = table.lookup(table.key(vox_all))
    keep = rows >= 0
    seg_all, rows = seg_all[keep], rows[keep]
    order = torch.sort(seg_all, stable=True).indices  # segment order; each walk visits a voxel once
    return seg_all[order], rows[order], q
