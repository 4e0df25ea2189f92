"""Cascade hand-over from the low-resolution shape latent to the high-resolution token grid (spec §1.3).

The shape decoder's ``upsample`` turns the LR latent (32³ grid) into voxels at ``lr_resolution`` (512) scale; those
are quantised onto the HR latent grid ``hr_res // 16``. If that gives too many tokens, ``hr_res`` drops by 128
(never below 1024) and the quantisation is redone (§13 item 20).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..sparse import SparseTensor

__all__ = ["quantize_coords", "hr_coords_from_lr", "cascade_hr_coords"]

_FLOOR_RES = 1024  # the loop stops here whatever the token count (§1.3 step 3)
_STEP = 128


def quantize_coords(coords: Tensor, lr_resolution: int, hr_res: int) -> Tensor:
    """Unique HR latent coords ``[K, 4]`` int32, rows sorted lexicographically, from ``coords [M, 4]`` int32.

    Per spatial axis ``q = int((c + 0.5) / lr_resolution * (hr_res // 16))`` in float32 with truncation toward
    zero, as the official code; the batch column is kept.
    """
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise InputError(f"cascade coords must be [M, 4] int (batch, x, y, z), got {list(coords.shape)}; pass the "
                         "shape decoder's upsample output")
    grid = hr_res // 16
    spatial = ((coords[:, 1:] + 0.5) / lr_resolution * grid).to(torch.int32)  # float32 ops, truncation
    hr = torch.cat([coords[:, :1].to(torch.int32), spatial], dim=1)
    return torch.unique(hr, dim=0)


def hr_coords_from_lr(coords: Tensor, lr_resolution: int, resolution: int, max_num_tokens: int
                      ) -> tuple[Tensor, int]:
    """The official resolution-reduction loop: returns ``(hr coords [K, 4] int32, hr_res)``.

    Starts at ``hr_res = resolution``; stops when ``K < max_num_tokens`` or ``hr_res == 1024``, else ``hr_res -= 128``.
    ``resolution`` must be 1024 plus a multiple of 128 (the loop would otherwise never reach its floor).
    """
    if resolution < _FLOOR_RES or (resolution - _FLOOR_RES) % _STEP:
        raise InputError(f"cascade resolution must be 1024 + k·128 (1024, 1152, ..., 1536, ..., 2048), got "
                         f"{resolution}; use a pipeline type such as '1536_cascade'")
    if max_num_tokens <= 0:
        raise InputError(f"max_num_tokens must be positive, got {max_num_tokens}; the official cap is 49152")
    hr_res = resolution
    while True:
        hr = quantize_coords(coords, lr_resolution, hr_res)
        if hr.shape[0] < max_num_tokens or hr_res == _FLOOR_RES:
            return hr, hr_res
        hr_res -= _STEP


def cascade_hr_coords(shape_decoder: torch.nn.Module, lr_slat: SparseTensor, resolution: int,
                      max_num_tokens: int = 49152, lr_resolution: int = 512) -> tuple[Tensor, int]:
    """Shape-decoder ``upsample`` of the denormalised LR latent, then :func:`hr_coords_from_lr` (§1.3 steps 2–3)."""
    with torch.no_grad():
        up = shape_decoder.upsample(lr_slat, upsample_times=4)  # [M, 4] at lr_resolution scale
    return hr_coords_from_lr(up, lr_resolution, resolution, max_num_tokens)
