"""UV-space triangle rasterisation: the face id covering each texel centre (spec trellis2-inference.md §9.5 step 1)."""
from __future__ import annotations

import torch

from ..dispatch import KernelPolicy, choose
from .reference import uv_raster_reference

__all__ = ["uv_raster", "uv_raster_reference"]


def _check(uv_px: object, faces: object, width: int, height: int) -> None:
    if not isinstance(uv_px, torch.Tensor) or not isinstance(faces, torch.Tensor):
        raise ValueError("uv_raster: uv_px and faces must be torch.Tensors.")
    if uv_px.dtype != torch.float32 or uv_px.dim() != 2 or uv_px.shape[1] != 2:
        raise ValueError(f"uv_raster: uv_px must be float32 [V, 2], got {uv_px.dtype} {list(uv_px.shape)}.")
    if faces.dtype != torch.int32 or faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"uv_raster: faces must be int32 [F, 3], got {faces.dtype} {list(faces.shape)}.")
    if uv_px.device != faces.device:
        raise ValueError(f"uv_raster: uv_px is on {uv_px.device} but faces on {faces.device}.")
    if width <= 0 or height <= 0 or width * height >= 1 << 31:
        raise ValueError(f"uv_raster: image size must be positive and below 2^31 texels, got {width}x{height}.")


def uv_raster(uv_px: torch.Tensor, faces: torch.Tensor, width: int, height: int, *,
              policy: KernelPolicy | None = None) -> torch.Tensor:
    """Return the face id per texel, [height, width] int32 (-1 = uncovered).

    ``uv_px`` [V, 2] float32 holds vertex positions in texel units (``u·width``, ``v·height``); texel (r, c) is
    sampled at ``(c + 0.5, r + 0.5)``, so row 0 is v ≈ 0. Where faces overlap, the highest face index wins. Face
    indices must be valid (the caller guarantees it).
    """
    _check(uv_px, faces, width, height)
    if faces.shape[0] > 0 and choose("uv_raster", uv_px.device, policy) == "triton":
        from .triton_impl import uv_raster_triton

        return uv_raster_triton(uv_px.contiguous(), faces.contiguous(), width, height)
    return uv_raster_reference(uv_px, faces, width, height)
