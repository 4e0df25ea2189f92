"""Shape SLat encoder (``FlexiDualGridVaeEncoder``): flexible dual grid → shape latent (spec §5.3, §11 step 4).

Input per voxel: the dual vertex relative to the voxel's minimum corner (voxel units, ≈ [0, 1]) and the three edge
flags; the network sees ``cat([offset − 0.5, flags − 0.5])`` (6 channels). ``input_layer`` (fp32) → stages of
``SparseConvNeXtBlock3d`` each ending (except the last) with a ``SparseResBlockS2C3d`` ×2 space-to-channel
down-block → fp32 head (non-affine LayerNorm eps 1e-5 → ``to_latent``, ``2·latent_channels``). The latent is the
posterior mean (first half); the second half is the log-variance (never sampled at inference).

The texturing pipeline decodes its texture latent onto the ENCODER's voxels (§11 step 6): every down-block's
parent/child grouping is returned as a :class:`~trellis2_core.sparse.resample.Subdivision` in
:attr:`ShapeEncoding.layouts`, ready to be passed to the texture decoder as ``guide_subs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..sparse import LayerNorm32, SparseLinear, SparseTensor, SubMConv3d, silu
from ..sparse.resample import Subdivision, group_parents, space_to_channel
from .sparse_unet import SparseConvNeXtBlock3d
from .streaming import weights_on_device

__all__ = ["SparseResBlockS2C3d", "FlexiDualGridVaeEncoder", "ShapeEncoding", "encoder_input"]

_BLOCK = "SparseConvNeXtBlock3d"
_DOWN_BLOCK = "SparseResBlockS2C3d"
_IN_CHANNELS = 6


class SparseResBlockS2C3d(nn.Module):
    """Residual ×2 down-block: ``conv2(SiLU(LN2(s2c(conv1(SiLU(LN1(x)))))))`` + the channel-averaged s2c skip.

    ``s2c`` packs the (up to) 8 children of each parent ``coord // 2`` into channels, slot ``s = dx + 2·dy + 4·dz``,
    zeros for absent children; parents come out sorted by (b, x, y, z). The skip packs ``x`` to ``8·C`` channels and
    averages consecutive groups of ``8·C / Co`` channels down to ``Co`` (§5.3).
    """

    def __init__(self, channels: int, out_channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        if out_channels % 8 or (8 * channels) % out_channels:
            raise InputError(f"S2C down-block {channels}→{out_channels}: out_channels must be a multiple of 8 and "
                             "divide 8·channels")
        self.channels = channels
        self.out_channels = out_channels
        self.norm1 = LayerNorm32(channels, eps=1e-6)
        self.conv1 = SubMConv3d(channels, out_channels // 8, dtype=dtype)
        self.norm2 = LayerNorm32(out_channels, eps=1e-6, elementwise_affine=False)
        self.conv2 = SubMConv3d(out_channels, out_channels, dtype=dtype)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``x [N, C]`` → parents ``[P, Co]`` (``P`` = distinct ``coord // 2``)."""
        h = space_to_channel(self.conv1(silu(self.norm1(x))))  # [P, Co]
        h = self.conv2(silu(self.norm2(h)))
        skip = space_to_channel(x).feats  # [P, 8C]
        skip = skip.view(skip.shape[0], self.out_channels, -1).mean(dim=2)
        return h.replace(h.feats + skip)


@dataclass(frozen=True)
class ShapeEncoding:
    """Encoder output: the latent (posterior mean), its log-variance and the voxel layout of every level."""

    latent: SparseTensor  # [M, latent_channels] float32 on the coarsest level
    logvar: Tensor  # [M, latent_channels] float32
    level_coords: tuple[Tensor, ...]  # coords [N_L, 4] int32 after each down-block (L = 1..num down-blocks)
    layouts: tuple[Subdivision, ...]  # per texture-decoder up-block (coarse → fine): children of each parent

    @property
    def guide_subs(self) -> list[Subdivision]:
        """The layouts as the texture decoder's ``guide_subs``."""
        return list(self.layouts)


def encoder_input(coords: Tensor, offsets: Tensor, intersected: Tensor) -> tuple[SparseTensor, Tensor]:
    """``(SparseTensor of voxel-local offsets [N, 3], flags [N, 3] bool)`` on ``coords [N, 4]`` (b, x, y, z)."""
    if coords.dim() != 2 or coords.shape[1] != 4 or offsets.shape != (coords.shape[0], 3) \
            or intersected.shape != (coords.shape[0], 3):
        raise InputError(f"encoder input must be coords [N, 4], offsets [N, 3] and flags [N, 3]; got "
                         f"{list(coords.shape)}, {list(offsets.shape)}, {list(intersected.shape)}")
    return SparseTensor(offsets.float(), coords.to(torch.int32)), intersected.bool()


def _check_config(model_channels: Sequence[int], num_blocks: Sequence[int], block_type: Sequence[str],
                  down_block_type: Sequence[str], block_args: Sequence[dict] | None) -> None:
    levels = len(model_channels)
    if levels < 1 or len(num_blocks) != levels or len(block_type) != levels or len(down_block_type) != levels - 1:
        raise InputError(f"FlexiDualGridVaeEncoder config mismatch: {levels} model_channels, {len(num_blocks)} "
                         f"num_blocks, {len(block_type)} block_type, {len(down_block_type)} down_block_type "
                         "(need L, L, L, L-1)")
    bad = sorted({t for t in block_type if t != _BLOCK} | {t for t in down_block_type if t != _DOWN_BLOCK})
    if bad:
        raise InputError(f"unsupported encoder block types {bad}; the released encoder uses {_BLOCK} and "
                         f"{_DOWN_BLOCK}")
    for args in block_args or []:
        extra = set(args) - {"use_checkpoint"}
        if extra:
            raise InputError(f"unsupported block_args {sorted(extra)} (only the training-only use_checkpoint)")


class FlexiDualGridVaeEncoder(nn.Module):
    """Shape SLat encoder; args follow the official JSON (``model_channels``, ``latent_channels``, ``num_blocks``,
    ``block_type``, ``down_block_type``, ``block_args``, ``use_fp16``; ``use_checkpoint`` is training-only)."""

    def __init__(self, model_channels: Sequence[int], latent_channels: int, num_blocks: Sequence[int],
                 block_type: Sequence[str], down_block_type: Sequence[str], block_args: Sequence[dict] | None = None,
                 use_fp16: bool = False, use_checkpoint: bool = False, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise InputError(f"FlexiDualGridVaeEncoder got unknown args: {', '.join(sorted(unknown))}")
        _check_config(model_channels, num_blocks, block_type, down_block_type, block_args)
        del use_checkpoint
        self.model_channels = list(model_channels)
        self.latent_channels = int(latent_channels)
        self.dtype = torch.float16 if use_fp16 else torch.float32  # trunk dtype, as the decoders (§5.3)
        self.input_layer = SparseLinear(_IN_CHANNELS, model_channels[0])  # fp32
        stages = []
        for i, ch in enumerate(model_channels):
            stage: list[nn.Module] = [SparseConvNeXtBlock3d(ch, self.dtype) for _ in range(num_blocks[i])]
            if i < len(model_channels) - 1:
                stage.append(SparseResBlockS2C3d(ch, model_channels[i + 1], self.dtype))
            stages.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(stages)
        self.to_latent = SparseLinear(model_channels[-1], 2 * latent_channels)  # fp32

    @property
    def num_down_blocks(self) -> int:
        return len(self.model_channels) - 1

    def forward(self, offsets: SparseTensor, intersected: Tensor) -> ShapeEncoding:
        """Encode ``offsets`` (feats ``[N, 3]`` voxel-local dual vertices) and ``intersected [N, 3]`` (bool)."""
        if not isinstance(offsets, SparseTensor) or offsets.feats.shape[1:] != (3,):
            raise InputError("the shape encoder expects a SparseTensor of dual-vertex offsets with feats [N, 3]")
        if intersected.shape != (offsets.num_voxels, 3):
            raise InputError(f"intersected must be [{offsets.num_voxels}, 3], got {list(intersected.shape)}")
        feats = torch.cat((offsets.feats.float() - 0.5, intersected.float() - 0.5), dim=1)
        w = self.input_layer.weight
        h = offsets.replace(self.input_layer(feats.to(w.dtype)).to(self.dtype))  # [N, C0]
        level_coords: list[Tensor] = []
        groupings: list[Subdivision] = []
        for stage in self.blocks:
            for block in stage:
                with weights_on_device(block):
                    if isinstance(block, SparseResBlockS2C3d):
                        g = group_parents(h)  # cached on h's voxels; the block's s2c reuses it
                        groupings.append(Subdivision(parent=g.parent, slot=g.slot, coords=h.coords))
                        h = block(h)
                        level_coords.append(h.coords)
                    else:
                        h = block(h)
        w = self.to_latent.weight
        normed = F.layer_norm(h.feats.float(), h.feats.shape[-1:], eps=1e-5)
        out = self.to_latent(normed.to(w.dtype)).float()  # [M, 2·latent]
        mean, logvar = out[:, :self.latent_channels], out[:, self.latent_channels:]
        layouts = tuple(reversed(groupings))
        return ShapeEncoding(latent=h.replace(mean.contiguous()), logvar=logvar.contiguous(),
                             level_coords=tuple(level_coords), layouts=layouts)
