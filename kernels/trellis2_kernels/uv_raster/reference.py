"""PyTorch reference for UV-space triangle rasterisation (spec trellis2-inference.md §9.5 step 1; runs anywhere).

Semantics: the image has ``height`` rows and ``width`` columns; texel ``(row r, col c)`` is sampled at its centre
``(x, y) = (c + 0.5, r + 0.5)`` in the same texel units as ``uv_px`` (so row 0 is ``v ≈ 0``: the bottom-up rows of
nvdiffrast). A texel belongs to a triangle when its centre is inside or on the triangle (edge functions all >= 0 or
all <= 0; zero-area triangles cover nothing). Where triangles overlap the **highest face index wins** (the official
bake composites chunks so that later faces win). Uncovered texels hold -1.
"""
from __future__ import annotations

import torch

__all__ = ["uv_raster_reference", "triangle_boxes", "inside_triangle"]

_CANDIDATE_BUDGET = 1 << 22  # texel candidates per chunk (~4 M): bounds the temporary memory


def triangle_boxes(tri: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Integer texel bounding boxes (inclusive) of ``tri`` [F, 3, 2]: ``x0, x1, y0, y1`` each [F] int64.

    Texel c is a candidate when its centre c + 0.5 lies in [min, max]; boxes are clamped to the image and may be
    empty (x1 < x0).
    """
    lo = tri.amin(dim=1)
    hi = tri.amax(dim=1)
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(0, width).to(torch.int64)
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(-1, width - 1).to(torch.int64)
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(0, height).to(torch.int64)
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(-1, height - 1).to(torch.int64)
    return x0, x1, y0, y1


def inside_triangle(tri: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Whether points ``(px, py)`` [N] lie in their triangles ``tri`` [N, 3, 2] (either winding, edges included)."""
    ax, ay = tri[:, 0, 0], tri[:, 0, 1]
    bx, by = tri[:, 1, 0], tri[:, 1, 1]
    cx, cy = tri[:, 2, 0], tri[:, 2, 1]
    e0 = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    e1 = (cx - bx) * (py - by) - (cy - by) * (px - bx)
    e2 = (ax - cx) * (py - cy) - (ay - cy) * (px - cx)
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    pos = (e0 >= 0) & (e1 >= 0) & (e2 >= 0)
    neg = (e0 <= 0) & (e1 <= 0) & (e2 <= 0)
    return (pos | neg) & (area2 != 0)


def uv_raster_reference(uv_px: torch.Tensor, faces: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Face id per texel: ``uv_px`` [V, 2] float32 texel units, ``faces`` [F, 3] int32 → [height, width] int32."""
    device = uv_px.device
    out = torch.full((height * width,), -1, dtype=torch.int64, device=device)
    if faces.shape[0] == 0:
        return out.view(height, width).to(torch.int32)
    tri_all = uv_px[faces.to(torch.int64)]  # [F, 3, 2]
    x0, x1, y0, y1 = triangle_boxes(tri_all, width, height)
    bw = (x1 - x0 + 1).clamp(min=0)
    bh = (y1 - y0 + 1).clamp(min=0)
    count = bw * bh  # [F]
    live = (count > 0).nonzero().squeeze(1)
    if live.numel() == 0:
        return out.view(height, width).to(torch.int32)
    ends = torch.cumsum(count[live], 0)
    marks = torch.arange(1, int(ends[-1]) // _CANDIDATE_BUDGET + 1, device=device) * _CANDIDATE_BUDGET
    cuts = torch.searchsorted(ends, marks, right=True).tolist()  # chunk k ends after the faces ending <= mark k
    bounds = sorted(set([0, live.numel()] + cuts))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        fid = live[lo:hi]
        n = count[fid]
        rep = torch.repeat_interleave(torch.arange(fid.numel(), device=device), n)  # [K] chunk-local face
        first = torch.cumsum(n, 0) - n
        local = torch.arange(rep.numel(), device=device) - first[rep]  # [K] index inside the box
        w = bw[fid][rep]
        cx = x0[fid][rep] + local % w
        cy = y0[fid][rep] + local // w
        face = fid[rep]
        hit = inside_triangle(tri_all[face], cx.to(uv_px.dtype) + 0.5, cy.to(uv_px.dtype) + 0.5)
        out.scatter_reduce_(0, (cy * width + cx)[hit], face[hit], reduce="amax")
    return out.view(height, width).to(torch.int32)
