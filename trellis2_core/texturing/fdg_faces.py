"""Face quadrics: which existing voxels each triangle overlaps (stage 2 of mesh → flexible dual grid, spec §11).

The official converter loops over each triangle's voxel bounding box and adds the triangle's plane quadric to
every voxel that is already in the table and passes a float32 triangle/box overlap test (the plane through the
box, then the three edge tests in each of the XY, YZ and ZX projections). Looping over a bounding box is
quadratic-to-cubic in the triangle size, so candidates here come from a conservative rasterisation instead: the
rows of the triangle's projection on its dominant plane, the columns each row covers and the few voxels the plane
crosses in each column, each range widened by one voxel. The final decision is the official float32 test on
those candidates, so the accepted pairs are the official ones.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fdg_accumulate import VoxelTable
from .fdg_quadric import dot3
from .fdg_scan import segment_ranges

__all__ = ["face_overlaps", "official_bbox"]

_INF = float("inf")


def official_bbox(tris: Tensor, voxel_size: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    """The official voxel range ``[lo, hi)`` per triangle and axis (float32 quotients, C++ truncation)."""
    lo = torch.trunc(tris.amin(dim=1) / voxel_size).to(torch.int64).clamp_min(0)
    hi = torch.minimum(torch.trunc(tris.amax(dim=1) / voxel_size + 1).to(torch.int64), grid)
    return lo, hi


def _strip_extent(pa: Tensor, pb: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The ``a``-extent of each projected triangle ``(pa, pb) [R, 3]`` inside the strip ``b ≤ y ≤ b + 1``."""
    lo_line, hi_line = b, b + 1
    cand = []
    inside = (pb >= lo_line[:, None]) & (pb <= hi_line[:, None])
    cand.append(torch.where(inside, pa, torch.nan))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        a0, a1, b0, b1 = pa[:, i], pa[:, j], pb[:, i], pb[:, j]
        for line in (lo_line, hi_line):
            denom = b1 - b0
            t = (line - b0) / torch.where(denom == 0, torch.ones_like(denom), denom)
            ok = (denom != 0) & (t >= 0) & (t <= 1)
            cand.append(torch.where(ok, a0 + t * (a1 - a0), torch.nan)[:, None])
    pts = torch.cat(cand, dim=1)
    lo = torch.where(torch.isnan(pts), _INF, pts).amin(dim=1)
    hi = torch.where(torch.isnan(pts), -_INF, pts).amax(dim=1)
    return lo, hi


def _candidates(tris: Tensor, normals: Tensor, lo: Tensor, hi: Tensor, vs64: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Conservative (triangle, voxel) candidate pairs: ``(triangle [P], voxel [P, 3] int64)``."""
    device = tris.device
    p = tris.to(torch.float64) / vs64  # grid units
    n = normals.to(torch.float64)
    dom = n.abs().argmax(dim=1)
    ax_a, ax_b = (dom + 1) % 3, (dom + 2) % 3
    ar = torch.arange(tris.shape[0], device=device)
    pa = p.gather(2, ax_a[:, None, None].expand(-1, 3, 1)).squeeze(2)
    pb = p.gather(2, ax_b[:, None, None].expand(-1, 3, 1)).squeeze(2)
    # rows b of the dominant-plane projection (one voxel of margin, inside the official box)
    b_lo = torch.maximum(torch.floor(pb.amin(dim=1)).to(torch.int64) - 1, lo[ar, ax_b])
    b_hi = torch.minimum(torch.floor(pb.amax(dim=1)).to(torch.int64) + 2, hi[ar, ax_b])
    tri, b = segment_ranges(b_lo, b_hi)
    a_min, a_max = _strip_extent(pa[tri], pb[tri], b.to(torch.float64))
    finite = torch.isfinite(a_min)
    a_min = torch.where(finite, a_min, 0.0)
    a_max = torch.where(finite, a_max, -2.0)
    a_lo = torch.maximum(torch.floor(a_min).to(torch.int64) - 1, lo[tri, ax_a[tri]])
    a_hi = torch.minimum(torch.floor(a_max).to(torch.int64) + 2, hi[tri, ax_a[tri]])
    row, a = segment_ranges(a_lo, a_hi)
    tri, b = tri[row], b[row]
    # the plane's dominant coordinate over the column's square: w = (n·v0 − n_a·x_a − n_b·x_b) / n_d (grid units)
    nd = n[tri, dom[tri]]
    na, nb = n[tri, ax_a[tri]], n[tri, ax_b[tri]]
    off = (n[tri] * p[tri, 0]).sum(dim=1)
    corners_a = torch.stack((a, a + 1, a, a + 1), dim=1).to(torch.float64)
    corners_b = torch.stack((b, b, b + 1, b + 1), dim=1).to(torch.float64)
    w = (off[:, None] - na[:, None] * corners_a - nb[:, None] * corners_b) / nd[:, None]
    d_lo = torch.maximum(torch.floor(w.amin(dim=1)).to(torch.int64) - 1, lo[tri, dom[tri]])
    d_hi = torch.minimum(torch.floor(w.amax(dim=1)).to(torch.int64) + 2, hi[tri, dom[tri]])
    col, d = segment_ranges(d_lo, d_hi)
    tri = tri[col]
    voxel = torch.zeros(col.shape[0], 3, dtype=torch.int64, device=device)
    voxel.scatter_(1, ax_a[tri][:, None], a[col][:, None])
    voxel.scatter_(1, ax_b[tri][:, None], b[col][:, None])
    voxel.scatter_(1, dom[tri][:, None], d[:, None])
    return tri, voxel


def _dot2(a0: Tensor, a1: Tensor, b0: Tensor, b1: Tensor) -> Tensor:
    return a0 * b0 + a1 * b1


def _overlap_test(tris: Tensor, normals: Tensor, voxel: Tensor, vs: Tensor) -> Tensor:
    """The official float32 triangle/box overlap test of each candidate (per-candidate triangle rows)."""
    v = [tris[:, 0], tris[:, 1], tris[:, 2]]
    e = [v[1] - v[0], v[2] - v[1], v[0] - v[2]]
    n = normals
    p = vs * voxel.to(torch.float32)
    c = torch.where(n > 0, vs, torch.zeros_like(vs))
    d1 = dot3(n, c - v[0])
    d2 = dot3(n, (vs - c) - v[0])
    ndp = dot3(n, p)
    ok = ~(((ndp + d1) * (ndp + d2)) > 0)
    # projections (i, j) with the sign taken from n[k]: XY (k = z), YZ (k = x), ZX (k = y)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        mul = torch.where(n[:, k] < 0, -1.0, 1.0).to(torch.float32)
        for edge, vert in zip(e, v):
            ne_i, ne_j = -mul * edge[:, j], mul * edge[:, i]
            d = -_dot2(ne_i, ne_j, vert[:, i], vert[:, j]) + _dot2(ne_i.clamp_min(0), ne_j.clamp_min(0), vs[i], vs[j])
            ok &= ~((_dot2(ne_i, ne_j, p[:, i], p[:, j]) + d) < 0)
    return ok


def face_overlaps(tris: Tensor, normals: Tensor, voxel_size: Tensor, table: VoxelTable,
                  chunk: int = 1 << 20) -> tuple[Tensor, Tensor]:
    """``(triangle [P], row [P])`` pairs whose plane quadric the official converter adds, in official order.

    ``tris [F, 3, 3]`` float32 aabb-relative corners, ``normals [F, 3]`` float32 (zero rows are skipped: their
    quadric is zero), ``voxel_size [3]`` float32.
    """
    device = tris.device
    grid = torch.tensor(table.grid, dtype=torch.int64, device=device)
    lo, hi = official_bbox(tris, voxel_size, grid)
    live = torch.nonzero((normals != 0).any(dim=1) & (hi > lo).all(dim=1)).squeeze(1)
    vs64 = voxel_size.to(torch.float64)
    out_tri, out_row = [], []
    # bound the candidate tensors: triangles in groups of roughly `chunk` bounding-box voxels
    volume = (hi - lo).clamp_min(0).prod(dim=1)[live]
    group = torch.div(torch.cumsum(volume, 0), chunk, rounding_mode="floor")
    for g in torch.unique(group).tolist() if live.numel() else []:
        ids = live[group == g]
        tri, voxel = _candidates(tris[ids], normals[ids], lo[ids], hi[ids], vs64)
        rows = table.lookup(table.key(voxel))
        keep = rows >= 0
        tri, voxel, rows = tri[keep], voxel[keep], rows[keep]
        ok = _overlap_test(tris[ids][tri], normals[ids][tri], voxel, voxel_size)
        out_tri.append(ids[tri[ok]])
        out_row.append(rows[ok])
    if not out_tri:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(out_tri), torch.cat(out_row)
