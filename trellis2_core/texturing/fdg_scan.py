"""Scan-line crossings of triangles with the voxel grid lines: stage 1 of mesh → flexible dual grid (spec §11).

For every triangle (in face order) and each axis ``ax2`` in 0, 1, 2 the official converter walks the grid lines
parallel to ``ax2``: with ``ax0 = (ax2+1) % 3`` and ``ax1 = (ax2+2) % 3`` the corners are sorted (stably) by their
``ax1`` coordinate, the triangle is cut into its lower and upper half, and for every row ``y_idx`` and column
``x_idx`` of grid-line positions ``(i + 1) · voxel_size`` (float32 products) inside the triangle the crossing point
``(x, y, z)`` is interpolated in float64. Each crossing touches the four voxels around that grid line,
``(x_idx + dx, y_idx + dy, z_idx)`` for ``dx`` then ``dy`` in 0, 1, and flags ``intersected[ax2]`` on the first one.

This module emits those events in exactly the official order, vectorised: the event index is the position in the
sequential C++ loop, which defines the voxels' first-touch row order and the float32 accumulation order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CrossingEvents", "scan_crossings", "segment_ranges"]

_DXDY = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.int64)  # official loop order: dx outer, dy inner


@dataclass(frozen=True)
class CrossingEvents:
    """Voxel touches in official order: ``voxel [E, 3]`` int64, ``point [E, 3]`` float32 crossing point,
    ``axis [E]`` int64 (the axis whose ``intersected`` flag the event sets, ``-1`` for none), ``tri [E]`` int64."""

    voxel: Tensor
    point: Tensor
    axis: Tensor
    tri: Tensor


def segment_ranges(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Expand integer ranges ``[lo_i, hi_i)`` (empty when ``hi <= lo``) → ``(owner [M], value [M])`` in order."""
    count = (hi - lo).clamp_min(0)
    owner = torch.repeat_interleave(torch.arange(lo.shape[0], device=lo.device), count)
    if owner.numel() == 0:
        return owner, owner.clone()
    starts = torch.cumsum(count, 0) - count  # first output position of each range
    value = torch.arange(owner.shape[0], device=lo.device) - starts[owner] + lo[owner]
    return owner, value


def _lerp(a: Tensor, b: Tensor, t: Tensor, va: Tensor, vb: Tensor) -> Tensor:
    """Official ``lerp``: ``va`` when ``a == b``, else ``(1 − α)·va + α·vb`` with ``α = (t − a)/(b − a)`` (float64,
    each operation rounded on its own: no fused multiply-add)."""
    same = a == b
    alpha = (t - a) / torch.where(same, torch.ones_like(b), b - a)
    if va.dim() > alpha.dim():
        alpha, same = alpha.unsqueeze(-1), same.unsqueeze(-1)
    return torch.where(same, va, (1 - alpha) * va + alpha * vb)


def _grid_line(index: Tensor, voxel_size: float) -> Tensor:
    """``(index + 1) · voxel_size`` as the official float32 product, widened to float64."""
    return ((index + 1).to(torch.float32) * torch.tensor(voxel_size, dtype=torch.float32)).to(torch.float64)


def _cell(value: Tensor, voxel_size: float, upper: int) -> Tensor:
    """``clamp(int(value / voxel_size), 0, upper − 1)`` (C++ truncation toward zero)."""
    return torch.trunc(value / voxel_size).clamp(0, upper - 1).to(torch.int64)


def scan_crossings(tris: Tensor, tri_index: Tensor, voxel_size: tuple[float, float, float],
                   grid: tuple[int, int, int]) -> CrossingEvents:
    """All crossing events of ``tris [F, 3, 3]`` float32 (aabb-min-relative corners) in official order.

    ``tri_index [F]`` are the triangles' global indices (their order is the official triangle order);
    ``voxel_size`` holds the float32 voxel sizes (as Python floats) and ``grid`` the grid size per axis.
    """
    device = tris.device
    f = tris.shape[0]
    corners = tris.to(torch.float64)  # [F, 3 corners, 3 xyz]
    # per (triangle, ax2): corners in (ax0, ax1, ax2) component order, sorted stably by the ax1 component
    perms = torch.tensor([[(a + 1) % 3, (a + 2) % 3, a] for a in range(3)], device=device)  # [3 ax2, 3]
    t = corners[:, None, :, :].expand(f, 3, 3, 3).gather(3, perms[None, :, None, :].expand(f, 3, 3, 3))
    order = torch.sort(t[..., 1], dim=2, stable=True).indices  # [F, 3, 3]
    t = t.gather(2, order[..., None].expand(f, 3, 3, 3))  # [F, ax2, k, comp]
    vs = torch.tensor(voxel_size, dtype=torch.float64, device=device)
    g = torch.tensor(grid, dtype=torch.int64, device=device)
    ax0, ax1 = perms[:, 0], perms[:, 1]
    vs1, g1 = vs[ax1][None, :, None], g[ax1][None, :, None]
    rows_at = torch.minimum(torch.trunc(t[..., 1] / vs1).clamp_min(0), (g1 - 1).to(torch.float64))
    rows_at = rows_at.clamp_min(0).to(torch.int64)  # [F, 3, 3] = start, mid, end per (triangle, ax2)
    # segments in loop order (triangle, ax2, half): half 0 rows [start, mid) over (t0, t1, t2),
    # half 1 rows [mid, end) over (t2, t1, t0)
    lo = torch.stack((rows_at[..., 0], rows_at[..., 1]), dim=2).reshape(-1)
    hi = torch.stack((rows_at[..., 1], rows_at[..., 2]), dim=2).reshape(-1)
    seg, y_idx = segment_ranges(lo, hi)
    tri_of, axis_of, half_of = seg // 6, (seg // 2) % 3, seg % 2
    tt = t[tri_of, axis_of]  # [R, 3 corners, 3 comp]
    first = torch.where(half_of == 0, 0, 2)
    top = tt[torch.arange(tt.shape[0], device=device), first]  # t0 of the half
    mid = tt[:, 1]
    bottom = tt[torch.arange(tt.shape[0], device=device), 2 - first]  # t2 of the half
    a0, a1, a2 = ax0[axis_of], ax1[axis_of], axis_of
    y = (y_idx + 1).to(torch.float32) * vs[a1].to(torch.float32)
    y = y.to(torch.float64)
    xz = [0, 2]
    t3 = _lerp(top[:, 1], mid[:, 1], y, top[:, xz], mid[:, xz])  # [R, 2] = (x, z)
    t4 = _lerp(top[:, 1], bottom[:, 1], y, top[:, xz], bottom[:, xz])
    swap = (t3[:, 0] > t4[:, 0])[:, None]
    t3, t4 = torch.where(swap, t4, t3), torch.where(swap, t3, t4)
    vs0, g0 = vs[a0], g[a0]
    line_start = torch.minimum(torch.trunc(t3[:, 0] / vs0).clamp_min(0), (g0 - 1).to(torch.float64))
    line_end = torch.minimum(torch.trunc(t4[:, 0] / vs0).clamp_min(0), (g0 - 1).to(torch.float64))
    row, x_idx = segment_ranges(line_start.clamp_min(0).to(torch.int64), line_end.clamp_min(0).to(torch.int64))
    x = ((x_idx + 1).to(torch.float32) * vs0[row].to(torch.float32)).to(torch.float64)
    z = _lerp(t3[row, 0], t4[row, 0], x, t3[row, 1], t4[row, 1])
    zc = torch.trunc(z / vs[a2[row]])
    keep = (zc >= 0) & (zc < g[a2[row]].to(torch.float64))
    row, x_idx, x, z, zc = row[keep], x_idx[keep], x[keep], z[keep], zc[keep].to(torch.int64)
    n = row.shape[0]
    r_a0, r_a1, r_a2 = a0[row], a1[row], a2[row]
    base = torch.zeros(n, 3, dtype=torch.int64, device=device)
    base.scatter_(1, r_a0[:, None], x_idx[:, None])
    base.scatter_(1, r_a1[:, None], y_idx[row][:, None])
    base.scatter_(1, r_a2[:, None], zc[:, None])
    point = torch.zeros(n, 3, dtype=torch.float64, device=device)
    point.scatter_(1, r_a0[:, None], x[:, None])
    point.scatter_(1, r_a1[:, None], y[row][:, None])
    point.scatter_(1, r_a2[:, None], z[:, None])
    point = point.to(torch.float32)
    step = torch.zeros(n, 4, 3, dtype=torch.int64, device=device)
    dxdy = _DXDY.to(device)
    step.scatter_(2, r_a0[:, None, None].expand(n, 4, 1), dxdy[None, :, :1].expand(n, 4, 1))
    step.scatter_add_(2, r_a1[:, None, None].expand(n, 4, 1), dxdy[None, :, 1:].expand(n, 4, 1))
    voxel = (base[:, None, :] + step).reshape(-1, 3)
    axis = torch.full((n, 4), -1, dtype=torch.int64, device=device)
    axis[:, 0] = r_a2
    return CrossingEvents(voxel=voxel, point=point[:, None, :].expand(n, 4, 3).reshape(-1, 3),
                          axis=axis.reshape(-1), tri=tri_index[tri_of[row]].repeat_interleave(4))
