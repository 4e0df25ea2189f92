"""PyTorch reference for the 3x3x3 submanifold neighbour map (sort + searchsorted; runs on any device).

Semantics (spec trellis2-inference.md §6.2): ``nbr[i, v]`` is the row of the voxel at
``(b_i, x_i+dx, y_i+dy, z_i+dz)`` with ``v = (dx+1)*9 + (dy+1)*3 + (dz+1)`` (x slowest), or -1 when no such voxel.
"""
from __future__ import annotations

import torch

# (dx, dy, dz) for v = 0..26, x slowest; offset 13 is the centre.
OFFSETS: tuple[tuple[int, int, int], ...] = tuple(
    (dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
)

_PACK_LIMIT = 1 << 62  # packed keys (and the +-1 neighbour keys) stay far from int64 overflow


def packing(lo: list[int], hi: list[int]) -> tuple[list[int], int] | None:
    """Mixed-radix sizes for keys of ``(b, x+1-lo_x, y+1-lo_y, z+1-lo_z)``, or None if they could overflow.

    x, y, z get one voxel of padding on both sides, so the key of any +-1 neighbour is in range and never wraps
    into another row of the packing. Returns ``([B, X, Y, Z], volume)``.
    """
    sizes = [hi[0] - lo[0] + 1] + [hi[a] - lo[a] + 3 for a in (1, 2, 3)]
    volume = 1
    for s in sizes:
        volume *= s
    if volume >= _PACK_LIMIT:
        return None
    return sizes, volume


def _lookup_sorted(sorted_keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each query in ``sorted_keys`` and whether it is there."""
    pos = torch.searchsorted(sorted_keys, query)
    pos.clamp_(max=sorted_keys.numel() - 1)
    return pos, sorted_keys[pos] == query


def _neighbor_map_packed(c: torch.Tensor, lo: list[int], sizes: list[int]) -> torch.Tensor:
    _, sx, sy, sz = sizes
    key = (((c[:, 0] - lo[0]) * sx + (c[:, 1] - lo[1] + 1)) * sy + (c[:, 2] - lo[2] + 1)) * sz + (c[:, 3] - lo[3] + 1)
    sorted_keys, order = torch.sort(key)
    order = order.to(torch.int32)
    nbr = torch.empty((c.shape[0], 27), dtype=torch.int32, device=c.device)
    for v, (dx, dy, dz) in enumerate(OFFSETS):
        pos, hit = _lookup_sorted(sorted_keys, key + (dx * sy + dy) * sz + dz)
        nbr[:, v] = torch.where(hit, order[pos], -1)
    return nbr


def _neighbor_map_staged(c: torch.Tensor) -> torch.Tensor:
    """Overflow-proof variant for huge coordinate ranges: rank-compress (b,x), then (rank,y), then (rank,z).

    Every stage's key is ``rank * 2**32 + (coord + 1)`` with rank < 2**31 and coord + 1 + 1 < 2**32, so no int64
    overflow is possible for any int32 input.
    """
    shift = 1 << 32
    k1 = c[:, 0] * shift + (c[:, 1] + 1)
    u1, r1 = torch.unique(k1, sorted=True, return_inverse=True)
    k2 = r1 * shift + (c[:, 2] + 1)
    u2, r2 = torch.unique(k2, sorted=True, return_inverse=True)
    k3 = r2 * shift + (c[:, 3] + 1)
    s3, order = torch.sort(k3)
    order = order.to(torch.int32)
    nbr = torch.empty((c.shape[0], 27), dtype=torch.int32, device=c.device)
    for v, (dx, dy, dz) in enumerate(OFFSETS):
        p1, h1 = _lookup_sorted(u1, k1 + dx)
        p2, h2 = _lookup_sorted(u2, p1 * shift + (c[:, 2] + 1 + dy))
        p3, h3 = _lookup_sorted(s3, p2 * shift + (c[:, 3] + 1 + dz))
        nbr[:, v] = torch.where(h1 & h2 & h3, order[p3], -1)
    return nbr


def build_neighbor_map_reference(coords: torch.Tensor, lo: list[int] | None = None,
                                 hi: list[int] | None = None) -> torch.Tensor:
    """Neighbour map ``[N, 27]`` int32 of unique ``coords`` ``[N, 4]`` int32 (b, x, y, z); -1 = no neighbour.

    ``lo``/``hi`` are the per-column min/max of ``coords`` when the caller already has them.
    """
    n = coords.shape[0]
    if n == 0:
        return torch.empty((0, 27), dtype=torch.int32, device=coords.device)
    c = coords.to(torch.int64)
    if lo is None or hi is None:
        lo_t, hi_t = torch.aminmax(c, dim=0)
        lo, hi = lo_t.tolist(), hi_t.tolist()
    pack = packing(lo, hi)
    if pack is None:
        return _neighbor_map_staged(c)
    return _neighbor_map_packed(c, lo, pack[0])
