"""Texture (PBR) decoder: ``SparseUnetVaeDecoder`` guided by the shape decoder's subdivisions (spec §5.2, §8.3).

Called as ``decoder(tex_slat, guide_subs=subs)``: every up-block follows ``subs[i] > 0`` instead of predicting, so
the output voxels are exactly the shape decoder's final voxels, in the same row order. The raw ``[M, 6]`` output
maps to PBR attributes by ``raw·0.5 + 0.5`` without clamping (§13 item 22).
"""
from __future__ import annotations

from torch import Tensor

from ..errors import InputError
from ..mesh.types import PbrVoxels
from ..sparse import SparseTensor
from .sparse_unet import SparseUnetVaeDecoder

__all__ = ["SparseUnetVaeDecoder", "raw_to_pbr", "pbr_voxels"]


def raw_to_pbr(raw: Tensor) -> Tensor:
    """PBR attributes ``[M, 6]`` = ``raw·0.5 + 0.5`` (no clamp; layout base_color 0:3, metallic, roughness, alpha)."""
    if raw.dim() != 2 or raw.shape[1] != 6:
        raise InputError(f"texture decoder output must be [M, 6], got {list(raw.shape)}")
    return raw * 0.5 + 0.5


def pbr_voxels(raw: SparseTensor, resolution: int) -> list[PbrVoxels]:
    """One :class:`PbrVoxels` per batch element from the texture decoder's raw output at grid ``resolution``."""
    attrs = raw_to_pbr(raw.feats.float())
    return [PbrVoxels(coords=raw.coords[rows, 1:].contiguous(), attrs=attrs[rows].contiguous(), resolution=resolution)
            for rows in raw.layout]
