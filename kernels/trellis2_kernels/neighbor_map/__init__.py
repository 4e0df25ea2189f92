"""3x3x3 submanifold neighbour map of a sparse voxel set (spec trellis2-inference.md §6.2)."""
from __future__ import annotations

import torch

from ..dispatch import KernelPolicy, choose
from .reference import OFFSETS, build_neighbor_map_reference

__all__ = ["OFFSETS", "build_neighbor_map", "build_neighbor_map_reference"]


def _check(coords: object) -> None:
    if not isinstance(coords, torch.Tensor):
        raise ValueError(f"build_neighbor_map: coords must be a torch.Tensor, got {type(coords).__name__}.")
    if coords.dtype != torch.int32:
        raise ValueError(f"build_neighbor_map: coords must be int32 (batch, x, y, z), got {coords.dtype}.")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"build_neighbor_map: coords must have shape [N, 4], got {list(coords.shape)}.")


def build_neighbor_map(coords: torch.Tensor, *, policy: KernelPolicy | None = None) -> torch.Tensor:
    """Return the neighbour map ``nbr`` [N, 27] int32 of ``coords`` [N, 4] int32 (batch, x, y, z).

    ``nbr[i, v]`` is the row of the voxel at ``(b_i, x_i+dx, y_i+dy, z_i+dz)``, ``v = (dx+1)*9 + (dy+1)*3 + (dz+1)``
    (x slowest), or -1 if absent; ``nbr[i, 13] == i``. Rows may come in any order but must be unique (the caller
    guarantees it) and every coordinate must be >= 0. The result is on ``coords.device``.
    """
    _check(coords)
    n = coords.shape[0]
    if n == 0:
        return torch.empty((0, 27), dtype=torch.int32, device=coords.device)
    lo_t, hi_t = torch.aminmax(coords, dim=0)  # one host sync; both backends need the bounds
    lo, hi = lo_t.tolist(), hi_t.tolist()
    if min(lo) < 0:
        raise ValueError(f"build_neighbor_map: coordinates must be >= 0, got per-column minima {lo}.")
    if choose("neighbor_map", coords.device, policy) == "triton":
        from .triton_impl import build_neighbor_map_triton

        return build_neighbor_map_triton(coords, lo, hi)
    return build_neighbor_map_reference(coords, lo, hi)
