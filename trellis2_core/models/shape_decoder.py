"""Shape decoder (``FlexiDualGridVaeDecoder``): shape latent → flexible-dual-grid voxels → meshes (spec §5.2, §8.1).

The trunk is :class:`SparseUnetVaeDecoder` with 7 output channels and predicted subdivisions. The head turns the
7 channels into dual-vertex offsets (0–2), edge-intersection flags (3–5) and a quad split weight (6); the mesher
makes one mesh per batch element at the grid resolution passed to :meth:`decode` (no mutable resolution state).
``upsample`` serves the cascade (§1.3): it returns the coordinates reached after the up-blocks.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..mesh.mesher import flexible_dual_grid_to_mesh
from ..mesh.types import Mesh
from ..sparse import SparseTensor
from .sparse_unet import SparseUnetVaeDecoder

__all__ = ["FlexiDualGridVaeDecoder", "ShapeDecoding", "DualGrid", "dual_grid_from_raw"]

_OUT_CHANNELS = 7
_AABB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))


class DualGrid(NamedTuple):
    """Head transforms of the raw 7-channel output, one row per voxel (§5.2)."""

    offsets: Tensor  # [M, 3] float32, dual vertex in voxel units from the voxel's min corner, in (-m, 1+m)
    intersected: Tensor  # [M, 3] bool, edge flags per axis (x, y, z)
    split_weight: Tensor  # [M, 1] float32, positive


class ShapeDecoding(NamedTuple):
    """Result of :meth:`FlexiDualGridVaeDecoder.decode`."""

    meshes: list[Mesh]  # one per batch element (vertices: one per final voxel of that element, row order)
    subs: list[SparseTensor]  # subdivision logits [N_i, 8] of each up-block, on its input voxels
    raw: SparseTensor  # [M, 7] float32 raw decoder output on the final voxels (b, x, y, z at `resolution`)


def dual_grid_from_raw(raw: Tensor, voxel_margin: float = 0.5) -> DualGrid:
    """``raw [M, 7]`` → offsets ``(1+2m)·sigmoid(o) − m``, flags ``o > 0``, split weights ``softplus(o)`` (§13 item 16)."""
    if raw.dim() != 2 or raw.shape[1] != _OUT_CHANNELS:
        raise InputError(f"raw shape-decoder output must be [M, 7], got {list(raw.shape)}")
    offsets = (1 + 2 * voxel_margin) * torch.sigmoid(raw[:, 0:3]) - voxel_margin
    return DualGrid(offsets, raw[:, 3:6] > 0, F.softplus(raw[:, 6:7]))


class FlexiDualGridVaeDecoder(SparseUnetVaeDecoder):
    """Shape SLat decoder with the flexible-dual-grid head (7 output channels, predicted subdivisions).

    ``resolution`` from the JSON is only the training default (256 in the released file): pass the real grid
    resolution (the pipeline's ``res``: 512, 1024, 1536, …) to :meth:`decode`.
    """

    def __init__(self, resolution: int, model_channels: Sequence[int], latent_channels: int,
                 num_blocks: Sequence[int], block_type: Sequence[str], up_block_type: Sequence[str],
                 block_args: Sequence[dict] | None = None, use_fp16: bool = False, voxel_margin: float = 0.5,
                 pred_subdiv: bool = True, use_checkpoint: bool = False, **unknown: Any) -> None:
        if unknown:
            raise InputError(f"FlexiDualGridVaeDecoder got unknown args: {', '.join(sorted(unknown))}")
        if not pred_subdiv:
            raise InputError("FlexiDualGridVaeDecoder must predict its subdivisions (pred_subdiv=true)")
        super().__init__(out_channels=_OUT_CHANNELS, model_channels=model_channels, latent_channels=latent_channels,
                         num_blocks=num_blocks, block_type=block_type, up_block_type=up_block_type,
                         block_args=block_args, use_fp16=use_fp16, pred_subdiv=True, use_checkpoint=use_checkpoint)
        self.default_resolution = int(resolution)  # informational: the JSON value, not used by decode
        self.voxel_margin = float(voxel_margin)

    def decode(self, latent: SparseTensor, resolution: int) -> ShapeDecoding:
        """Decode a (denormalised) shape latent into meshes at grid ``resolution`` (§1.1 stage 5)."""
        if not isinstance(resolution, int) or resolution <= 0:
            raise InputError(f"decode needs a positive int grid resolution, got {resolution!r}")
        raw, subs = self.forward_with_subs(latent)
        return ShapeDecoding(self.meshes_from_raw(raw, resolution), subs, raw)

    def meshes_from_raw(self, raw: SparseTensor, resolution: int) -> list[Mesh]:
        """Run the head transforms and the dual-grid mesher per batch element of ``raw [M, 7]``."""
        grid = dual_grid_from_raw(raw.feats.float(), self.voxel_margin)
        meshes = []
        for rows in raw.layout:
            meshes.append(flexible_dual_grid_to_mesh(
                raw.coords[rows, 1:], grid.offsets[rows], grid.intersected[rows], grid.split_weight[rows],
                grid_size=resolution, aabb=_AABB,
            ))
        return meshes

    def upsample(self, latent: SparseTensor, upsample_times: int = 4) -> Tensor:
        """Voxel coords ``[M, 4]`` int32 after ``upsample_times`` up-blocks (16× the latent grid for 4; §1.3)."""
        return self.upsample_coords(latent, upsample_times)
