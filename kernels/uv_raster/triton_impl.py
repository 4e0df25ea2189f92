"""Triton UV rasteriser: one program per triangle, walking its texel bounding box in 16x16 tiles.

Each covered texel receives ``atomic_max(face id)``, which reproduces the reference's "highest face index wins"
independently of scheduling. The inside test evaluates the same edge functions as the reference in float32; the
compiler may contract them into FMAs, so texel centres lying within rounding distance of an edge can differ from the
reference (tests allow a tiny mismatch fraction for that reason).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["uv_raster_triton"]


@triton.jit
def _raster_kernel(uv_ptr, faces_ptr, out_ptr, width, height, TILE: tl.constexpr):
    f = tl.program_id(0)
    i0 = tl.load(faces_ptr + f * 3 + 0).to(tl.int64)
    i1 = tl.load(faces_ptr + f * 3 + 1).to(tl.int64)
    i2 = tl.load(faces_ptr + f * 3 + 2).to(tl.int64)
    ax = tl.load(uv_ptr + i0 * 2)
    ay = tl.load(uv_ptr + i0 * 2 + 1)
    bx = tl.load(uv_ptr + i1 * 2)
    by = tl.load(uv_ptr + i1 * 2 + 1)
    cx = tl.load(uv_ptr + i2 * 2)
    cy = tl.load(uv_ptr + i2 * 2 + 1)
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    x0 = tl.maximum(tl.ceil(tl.minimum(tl.minimum(ax, bx), cx) - 0.5), 0.0).to(tl.int32)
    x1 = tl.minimum(tl.floor(tl.maximum(tl.maximum(ax, bx), cx) - 0.5), width - 1.0).to(tl.int32)
    y0 = tl.maximum(tl.ceil(tl.minimum(tl.minimum(ay, by), cy) - 0.5), 0.0).to(tl.int32)
    y1 = tl.minimum(tl.floor(tl.maximum(tl.maximum(ay, by), cy) - 0.5), height - 1.0).to(tl.int32)
    y1 = tl.where(area2 == 0.0, y0 - 1, y1)  # zero-area triangles cover nothing
    rows = tl.arange(0, TILE)[:, None]
    cols = tl.arange(0, TILE)[None, :]
    for ty in range(y0, y1 + 1, TILE):
        for tx in range(x0, x1 + 1, TILE):
            py = ty + rows
            px = tx + cols
            fx = px.to(tl.float32) + 0.5
            fy = py.to(tl.float32) + 0.5
            e0 = (bx - ax) * (fy - ay) - (by - ay) * (fx - ax)
            e1 = (cx - bx) * (fy - by) - (cy - by) * (fx - bx)
            e2 = (ax - cx) * (fy - cy) - (ay - cy) * (fx - cx)
            pos = (e0 >= 0.0) & (e1 >= 0.0) & (e2 >= 0.0)
            neg = (e0 <= 0.0) & (e1 <= 0.0) & (e2 <= 0.0)
            hit = (pos | neg) & (px <= x1) & (py <= y1)
            offs = py.to(tl.int64) * width + px
            tl.atomic_max(out_ptr + offs, tl.zeros([TILE, TILE], dtype=tl.int32) + f, mask=hit)


def uv_raster_triton(uv_px: torch.Tensor, faces: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Triton twin of :func:`uv_raster_reference` (same arguments, same result up to edge rounding)."""
    assert uv_px.is_contiguous() and faces.is_contiguous()
    out = torch.full((height, width), -1, dtype=torch.int32, device=uv_px.device)
    n = faces.shape[0]
    if n > 0:
        _raster_kernel[(n,)](uv_px, faces, out, width, height, TILE=16)
    return out
