"""Voxel bookkeeping of the mesh → flexible dual grid converter: first-touch numbering and ordered float32 sums.

The official converter keeps a hash map from voxel to row, appends a voxel the first time an event touches it
(that append order is the output row order) and accumulates per-voxel float32 sums (crossing-point means,
quadrics) one event at a time. Float32 addition is not associative, so to reproduce those sums bit for bit the
events of each voxel are added in their original order: events are grouped by their rank inside their voxel
and added rank by rank (each voxel appears at most once per rank, so every step is a plain element-wise add).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VoxelTable", "ordered_add"]


class VoxelTable:
    """Voxel → row map with rows numbered in first-touch order (grows as events arrive in official order)."""

    def __init__(self, grid: tuple[int, int, int], device: torch.device | str = "cpu") -> None:
        self.grid = tuple(int(g) for g in grid)
        self.device = torch.device(device)
        self._keys = torch.empty(0, dtype=torch.int64, device=self.device)  # sorted voxel keys
        self._rows = torch.empty(0, dtype=torch.int64, device=self.device)  # row of each sorted key
        self._coords: list[Tensor] = []

    def key(self, voxel: Tensor) -> Tensor:
        """Linear int64 key of voxel indices ``[..., 3]`` (must lie inside the grid)."""
        v = voxel.to(torch.int64)
        return (v[..., 0] * self.grid[1] + v[..., 1]) * self.grid[2] + v[..., 2]

    def __len__(self) -> int:
        return int(self._keys.shape[0])

    def lookup(self, keys: Tensor) -> Tensor:
        """Row of each key, ``-1`` where the voxel is not in the table."""
        if len(self) == 0 or keys.numel() == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self._keys, keys).clamp_max(len(self) - 1)
        found = self._keys[pos] == keys
        return torch.where(found, self._rows[pos], torch.full_like(keys, -1))

    def touch(self, voxel: Tensor) -> Tensor:
        """Rows of the voxels ``[E, 3]`` of events given in official order, appending unseen voxels in the order
        they are first touched."""
        keys = self.key(voxel)
        if keys.numel() == 0:
            return keys
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        first = torch.full((uniq.shape[0],), keys.shape[0], dtype=torch.int64, device=keys.device)
        first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
        rows = self.lookup(uniq)
        new = torch.nonzero(rows < 0).squeeze(1)
        if new.numel():
            new = new[torch.argsort(first[new])]  # first-touch order of the unseen voxels
            rows[new] = torch.arange(len(self), len(self) + new.shape[0], device=keys.device)
            self._coords.append(voxel[first[new]].to(torch.int32))
            merged = torch.cat((self._keys, uniq[new]))
            order = torch.argsort(merged)
            self._keys = merged[order]
            self._rows = torch.cat((self._rows, rows[new]))[order]
        return rows[inverse]

    def coords(self) -> Tensor:
        """Voxel indices ``[V, 3]`` int32 in row order."""
        if not self._coords:
            return torch.empty(0, 3, dtype=torch.int32, device=self.device)
        return torch.cat(self._coords)


def ordered_add(acc: Tensor, rows: Tensor, values: Tensor) -> None:
    """``acc[rows[i]] += values[i]`` for ``i = 0, 1, …`` in that order, in ``acc``'s dtype (in place).

    ``acc [V, C]``, ``rows [E]`` int64, ``values [E, C]``. Sums per row are sequential, exactly as a scalar loop.
    """
    if rows.numel() == 0:
        return
    order = torch.sort(rows, stable=True).indices  # grouped by row, original order inside each row
    grouped = rows[order]
    change = torch.ones_like(grouped, dtype=torch.bool)
    change[1:] = grouped[1:] != grouped[:-1]
    group_start = torch.cummax(torch.where(change, torch.arange(grouped.shape[0], device=rows.device), 0), 0).values
    rank = torch.arange(grouped.shape[0], device=rows.device) - group_start
    by_rank = torch.sort(rank, stable=True)
    counts = torch.bincount(by_rank.values).tolist()
    sel = order[by_rank.indices]
    vals = values.to(acc.dtype)
    start = 0
    for n in counts:
        idx = sel[start:start + n]
        r = rows[idx]
        acc[r] = acc[r] + vals[idx]
        start += n
