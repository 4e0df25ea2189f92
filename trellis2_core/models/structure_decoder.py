"""Sparse-structure decoder (TRELLIS v1 ``SparseStructureDecoder``): 16³ latent → 64³ occupancy logits (spec §5.1).

Dense 3-D convolutions on ``[B, C, X, Y, Z]``. The trunk (``middle_block`` and ``blocks`` convs) runs in float16
when ``use_fp16``; ``input_layer``, ``out_layer`` and every LayerNorm parameter stay float32, LayerNorms compute in
float32. :func:`occupancy_to_coords` is the pipeline's post-processing into sparse coordinates.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["SparseStructureDecoder", "occupancy_to_coords", "pixel_shuffle_3d"]


def _conv3(cin: int, cout: int, dtype: torch.dtype | None = None) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1, dtype=dtype)


class ChannelLayerNorm32(nn.LayerNorm):
    """LayerNorm over the channel dim of ``[B, C, X, Y, Z]`` in float32 (affine, eps 1e-5); returns the input dtype."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        h = x.permute(0, 2, 3, 4, 1).float()  # [B, X, Y, Z, C]
        h = F.layer_norm(h, self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return h.permute(0, 4, 1, 2, 3).to(x.dtype)


class ResBlock3d(nn.Module):
    """LN → SiLU → conv → LN → SiLU → conv, plus the identity skip (§5.1)."""

    def __init__(self, channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm32(channels, eps=1e-5)
        self.conv1 = _conv3(channels, channels, dtype)
        self.norm2 = ChannelLayerNorm32(channels, eps=1e-5)
        self.conv2 = _conv3(channels, channels, dtype)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


def pixel_shuffle_3d(x: Tensor, factor: int = 2) -> Tensor:
    """``[B, C·f³, X, Y, Z] → [B, C, fX, fY, fZ]``; output channel c at ``(fX+a, fY+b, fZ+d)`` reads input
    channel ``c·f³ + a·f² + b·f + d`` (x offset most significant, §5.1)."""
    b, c8, nx, ny, nz = x.shape
    f = factor
    c = c8 // (f ** 3)
    h = x.reshape(b, c, f, f, f, nx, ny, nz)
    h = h.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, X, a, Y, b, Z, d]
    return h.reshape(b, c, nx * f, ny * f, nz * f)


class UpsampleBlock3d(nn.Module):
    """Conv3d(Ci → Co·8) then 3-D pixel shuffle ×2 (§5.1)."""

    def __init__(self, in_channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = _conv3(in_channels, out_channels * 8, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SparseStructureDecoder(nn.Module):
    """Dense conv decoder of the sparse-structure latent ``[B, latent_channels, 16, 16, 16]`` → logits ``[B, out, 64³]``.

    Args follow the official JSON: ``out_channels``, ``latent_channels``, ``num_res_blocks``,
    ``num_res_blocks_middle``, ``channels`` (one width per resolution level), ``norm_type`` (only ``"layer"``),
    ``use_fp16``. ``use_checkpoint`` is training-only and ignored.
    """

    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: list[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False,
                 use_checkpoint: bool = False, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise InputError(f"SparseStructureDecoder got unknown args: {', '.join(sorted(unknown))}")
        if norm_type != "layer":
            raise InputError(f"SparseStructureDecoder supports norm_type='layer' only (the released model), "
                             f"got {norm_type!r}")
        if not channels:
            raise InputError("SparseStructureDecoder needs at least one channel width")
        del use_checkpoint  # training-only
        self.dtype = torch.float16 if use_fp16 else torch.float32  # trunk dtype (§5.1)
        trunk = self.dtype
        self.input_layer = _conv3(latent_channels, channels[0])
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0], trunk) for _ in range(num_res_blocks_middle)])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch, trunk) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1], trunk))
        self.blocks = nn.Sequential(*blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm32(channels[-1], eps=1e-5), nn.SiLU(), _conv3(channels[-1], out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, latent, X, Y, Z]`` → logits ``[B, out, 4X, 4Y, 4Z]`` (for the released config) in ``x.dtype``."""
        if x.dim() != 5:
            raise InputError(f"SparseStructureDecoder expects [B, C, X, Y, Z], got {list(x.shape)}")
        w = self.input_layer.weight
        h = F.conv3d(x.to(w.dtype), w, self.input_layer.bias, padding=1)
        h = h.to(self.dtype)
        h = self.middle_block(h)
        h = self.blocks(h)
        h = h.to(x.dtype)
        return self.out_layer(h.to(self.out_layer[2].weight.dtype)).to(x.dtype)


def occupancy_to_coords(logits: Tensor, resolution: int) -> Tensor:
    """Sparse coords ``[N, 4]`` int32 (b, x, y, z), lexicographic, of the occupied voxels at ``resolution`` (§5.1).

    ``occupancy = logits > 0``; when ``resolution`` is coarser than the decoded grid, the occupancy is max-pooled
    by the ratio (logical OR over each block; 64³ → 32³ in the released pipelines).
    """
    if logits.dim() != 5 or logits.shape[1] != 1:
        raise InputError(f"occupancy logits must be [B, 1, X, Y, Z], got {list(logits.shape)}")
    size = logits.shape[2]
    if resolution <= 0 or size % resolution:
        raise InputError(f"resolution {resolution} must divide the decoded grid size {size}")
    occ = logits > 0
    if resolution != size:
        ratio = size // resolution
        occ = F.max_pool3d(occ.float(), ratio, ratio, 0) > 0.5
    return torch.argwhere(occ)[:, [0, 2, 3, 4]].to(torch.int32)
