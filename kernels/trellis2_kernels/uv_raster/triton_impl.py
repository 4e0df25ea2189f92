"""Triton UV rasteriser: one program per (triangle, 16×16 tile of its texel bounding box).

The host computes every triangle's texel box (with the reference's ``triangle_boxes``, so both paths agree on it)
and drops zero-area triangles, then flattens the tiles of all boxes into one launch: small triangles (almost all
of them) get one program, large ones many, so the load is balanced and no program loops over data-dependent
bounds. Each covered texel receives
``atomic_max(face id)``, which reproduces the reference's "highest face index wins" independently of scheduling.
The inside test evaluates the same edge functions as the reference in float32; the compiler may contract them into
FMAs, so texel centres within rounding distance of an edge can differ from the reference (the tests allow a tiny
mismatch fraction for that reason).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import triangle_boxes

__all__ = ["uv_raster_triton"]

_TILE = 16


@triton.jit
def _raster_kernel(uv_ptr, faces_ptr, box_ptr, face_of_ptr, tile_of_ptr, out_ptr, width, TILE: tl.constexpr):
    pid = tl.program_id(0)
    f = tl.load(face_of_ptr + pid)  # triangle of this program
    t = tl.load(tile_of_ptr + pid)  # tile index inside the triangle's box
    x0 = tl.load(box_ptr + f * 4 + 0)
    x1 = tl.load(box_ptr + f * 4 + 1)
    y0 = tl.load(box_ptr + f * 4 + 2)
    y1 = tl.load(box_ptr + f * 4 + 3)
    tiles_x = (x1 - x0 + TILE) // TILE
    tx = x0 + (t % tiles_x) * TILE
    ty = y0 + (t // tiles_x) * TILE
    i0 = tl.load(faces_ptr + f * 3 + 0).to(tl.int64)
    i1 = tl.load(faces_ptr + f * 3 + 1).to(tl.int64)
    i2 = tl.load(faces_ptr + f * 3 + 2).to(tl.int64)
    ax = tl.load(uv_ptr + i0 * 2)
    ay = tl.load(uv_ptr + i0 * 2 + 1)
    bx = tl.load(uv_ptr + i1 * 2)
    by = tl.load(uv_ptr + i1 * 2 + 1)
    cx = tl.load(uv_ptr + i2 * 2)
    cy = tl.load(uv_ptr + i2 * 2 + 1)
    py = ty + tl.arange(0, TILE)[:, None]
    px = tx + tl.arange(0, TILE)[None, :]
    fx = px.to(tl.float32) + 0.5
    fy = py.to(tl.float32) + 0.5
    e0 = (bx - ax) * (fy - ay) - (by - ay) * (fx - ax)
    e1 = (cx - bx) * (fy - by) - (cy - by) * (fx - bx)
    e2 = (ax - cx) * (fy - cy) - (ay - cy) * (fx - cx)
    pos = (e0 >= 0.0) & (e1 >= 0.0) & (e2 >= 0.0)
    neg = (e0 <= 0.0) & (e1 <= 0.0) & (e2 <= 0.0)
    hit = (pos | neg) & (px <= x1) & (py <= y1)
    offs = py.to(tl.int64) * width + px
    tl.atomic_max(out_ptr + offs, tl.zeros([TILE, TILE], dtype=tl.int32) + f.to(tl.int32), mask=hit)


def uv_raster_triton(uv_px: torch.Tensor, faces: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Triton twin of :func:`uv_raster_reference` (same arguments, same result up to edge rounding)."""
    assert uv_px.is_contiguous() and faces.is_contiguous()
    device = uv_px.device
    out = torch.full((height, width), -1, dtype=torch.int32, device=device)
    if faces.shape[0] == 0:
        return out
    tri = uv_px[faces.to(torch.int64)]  # [F, 3, 2]
    x0, x1, y0, y1 = triangle_boxes(tri, width, height)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # as the reference
    tiles = ((x1 - x0 + _TILE) // _TILE).clamp(min=0) * ((y1 - y0 + _TILE) // _TILE).clamp(min=0)
    tiles = torch.where((x1 >= x0) & (y1 >= y0) & (area2 != 0), tiles, 0)  # [F]; zero-area faces cover nothing
    face_of = torch.repeat_interleave(torch.arange(faces.shape[0], device=device), tiles)  # one host sync
    n = face_of.numel()
    if n == 0:
        return out
    first = torch.cumsum(tiles, 0) - tiles
    tile_of = torch.arange(n, device=device) - first[face_of]
    box = torch.stack((x0, x1, y0, y1), dim=1).to(torch.int32).contiguous()  # [F, 4]
    _raster_kernel[(n,)](uv_px, faces, box, face_of.to(torch.int32), tile_of.to(torch.int32), out, width,
                         TILE=_TILE)
    return out
