"""Quadric error terms of the mesh → flexible dual grid converter, in the official float32 arithmetic.

A quadric is a symmetric 4×4 matrix ``Q`` with ``err(p) = [p, 1]ᵀ Q [p, 1]``; it is stored as its 10 upper
triangle entries (:data:`UPPER`). Sums of quadrics are element-wise, so the packed form adds exactly like the
full matrix. Every multiply and add is rounded on its own (the official build has no fused multiply-add). Sums run left to
right, ``(a0·b0 + a1·b1) + a2·b2``: the reduction order of the Eigen commit the official build pins (measured on
the golden cases: the pairwise order of Eigen 3.4.0 reproduces far fewer dual vertices bit for bit).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["UPPER", "dot3", "sq_norm3", "triangle_normals", "plane_quadrics", "segment_quadrics", "unpack"]

#: (row, col) of the 10 packed entries
UPPER: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3),
                                      (3, 3))


def dot3(a: Tensor, b: Tensor) -> Tensor:
    """``a·b`` over the last dim (3), summed left to right."""
    return (a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]) + a[..., 2] * b[..., 2]


def sq_norm3(a: Tensor) -> Tensor:
    """``|a|²`` over the last dim (3) as ``a0² + (a1² + a2²)`` (Eigen's ``squaredNorm`` of a fixed 3-vector)."""
    return a[..., 0] * a[..., 0] + (a[..., 1] * a[..., 1] + a[..., 2] * a[..., 2])


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return torch.stack((a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                        a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                        a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]), dim=-1)


def triangle_normals(tris: Tensor) -> Tensor:
    """Unit normals ``[F, 3]`` float32 of ``tris [F, 3, 3]`` float32: ``normalize((v1 − v0) × (v2 − v1))``; a zero
    cross product (or one whose squared norm underflows) is returned unchanged, as Eigen's ``normalized()``."""
    e0 = tris[:, 1] - tris[:, 0]
    e1 = tris[:, 2] - tris[:, 1]
    n = _cross(e0, e1)
    sq = sq_norm3(n)
    return torch.where((sq > 0)[:, None], n / torch.sqrt(sq)[:, None], n)


def _outer_packed(p: Tensor) -> Tensor:
    """Packed ``p pᵀ`` of 4-vectors ``p [F, 4]``."""
    return torch.stack([p[:, i] * p[:, j] for i, j in UPPER], dim=1)


def plane_quadrics(tris: Tensor, normals: Tensor) -> Tensor:
    """Packed plane quadrics ``[F, 10]`` float32: ``plane plane``ᵀ with ``plane = (n, −n·v0)``."""
    plane = torch.cat((normals, -dot3(normals, tris[:, 0])[:, None]), dim=1)
    return _outer_packed(plane)


def segment_quadrics(v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Boundary-segment quadrics of segments ``v0 → v1`` (``[S, 3]`` float32).

    Returns ``(Q [S, 10] float32, direction [S, 3] float64 unit, length [S] float64)``: ``A = I − d dᵀ`` (outer
    product in float64 rounded to float32), ``b = −A v0``, ``c = v0ᵀ A v0`` — the squared distance to the line.
    """
    d = (v1 - v0).to(torch.float64)
    length = torch.sqrt(sq_norm3(d))
    unit = d / torch.where(length > 0, length, torch.ones_like(length))[:, None]
    outer = (unit[:, :, None] * unit[:, None, :]).to(torch.float32)  # [S, 3, 3]
    a = torch.eye(3, dtype=torch.float32, device=v0.device) - outer
    av = torch.stack([dot3(a[:, i, :], v0) for i in range(3)], dim=1)  # A v0 (row-wise dots)
    b = -av
    row = torch.stack([dot3(a[:, :, j], v0) for j in range(3)], dim=1)  # v0ᵀ A
    c = dot3(row, v0)
    full = torch.zeros(v0.shape[0], 4, 4, dtype=torch.float32, device=v0.device)
    full[:, :3, :3] = a
    full[:, :3, 3] = b
    full[:, 3, :3] = b
    full[:, 3, 3] = c
    return torch.stack([full[:, i, j] for i, j in UPPER], dim=1), unit, length


def unpack(q: Tensor) -> Tensor:
    """Packed quadrics ``[N, 10]`` → symmetric matrices ``[N, 4, 4]``."""
    full = q.new_zeros(q.shape[0], 4, 4)
    for k, (i, j) in enumerate(UPPER):
        full[:, i, j] = q[:, k]
        full[:, j, i] = q[:, k]
    return full
