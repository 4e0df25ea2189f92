"""Channel↔space resampling between sparse grid levels (spec §5.2, §5.3, §6.3).

Up: each parent voxel splits into the children selected by an ``[N, 8]`` mask; child slot ``s = dx + 2·dy + 4·dz``
(x is the least significant bit), children ordered parent-major then slot-ascending, child coordinate
``2·parent + (dx, dy, dz)``. A parent's ``8·C`` channels are read as ``[8, C]`` and child ``s`` takes row ``s``.
Down: voxels group into parents ``coord // 2`` (parents sorted lexicographically by (b, x, y, z)); a parent's
``8·C`` channels hold its children's features in slot order, zeros where a child is absent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .tensor import SparseTensor

__all__ = ["Subdivision", "subdivide", "expand_children", "channel_to_space", "Grouping", "group_parents",
           "space_to_channel"]

# device given explicitly: this module may first be imported inside a ``with torch.device("meta")`` model build
_OFFSETS = torch.tensor([[s & 1, (s >> 1) & 1, (s >> 2) & 1] for s in range(8)], dtype=torch.int32, device="cpu")


@dataclass(frozen=True)
class Subdivision:
    """Where each child voxel comes from: ``parent [M]`` int64 row of the parent, ``slot [M]`` int64 in 0..7."""

    parent: Tensor
    slot: Tensor
    coords: Tensor  # [M, 4] int32


def subdivide(x: SparseTensor, mask: Tensor) -> Subdivision:
    """Children of ``x``'s voxels selected by ``mask [N, 8]`` (bool)."""
    if mask.dtype != torch.bool or mask.shape != (x.num_voxels, 8):
        raise InputError(f"subdivision mask must be bool [{x.num_voxels}, 8], got {mask.dtype} {list(mask.shape)}")
    pairs = mask.nonzero()  # row-major: parent-major, slot-ascending
    parent, slot = pairs[:, 0], pairs[:, 1]
    coords = x.coords[parent].clone()
    coords[:, 1:] = coords[:, 1:] * 2 + _OFFSETS.to(coords.device)[slot]
    return Subdivision(parent=parent, slot=slot, coords=coords)


def expand_children(parent_feats: Tensor, sub: Subdivision) -> Tensor:
    """Child features ``[M, C]`` from parent features ``[N, 8·C]`` (child ``s`` reads channels ``s·C..s·C+C-1``)."""
    n, c8 = parent_feats.shape
    if c8 % 8:
        raise InputError(f"channel-to-space needs a multiple of 8 channels, got {c8}")
    return parent_feats.view(n, 8, c8 // 8)[sub.parent, sub.slot]


def channel_to_space(x: SparseTensor, mask: Tensor) -> SparseTensor:
    """Subdivide ``x`` by ``mask`` and spread its ``8·C`` channels over the children (``[M, C]``)."""
    sub = subdivide(x, mask)
    return SparseTensor(expand_children(x.feats, sub), sub.coords, validate=False)


@dataclass(frozen=True)
class Grouping:
    """Parents of a voxel set: ``coords [P, 4]`` int32 sorted, ``parent [N]`` and ``slot [N]`` per child row."""

    coords: Tensor
    parent: Tensor
    slot: Tensor


def _pack(coords: Tensor) -> Tensor:
    """Order-preserving int64 key of (b, x, y, z) rows."""
    c = coords.long()
    hi = c.amax(dim=0) + 1 if c.shape[0] else torch.ones(4, dtype=torch.long, device=c.device)
    key = c[:, 0]
    for axis in (1, 2, 3):
        key = key * hi[axis] + c[:, axis]
    return key


def group_parents(x: SparseTensor) -> Grouping:
    """Group ``x``'s voxels into their parents at half resolution (cached on ``x``)."""
    def make() -> Grouping:
        half = x.coords.clone()
        half[:, 1:] = torch.div(half[:, 1:], 2, rounding_mode="floor")
        keys = _pack(half)
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        first = torch.full((uniq.shape[0],), x.num_voxels, dtype=torch.long, device=keys.device)
        first.scatter_reduce_(0, inverse, torch.arange(x.num_voxels, device=keys.device), reduce="amin")
        rem = x.coords[:, 1:] - half[:, 1:] * 2
        slot = (rem[:, 0] + 2 * rem[:, 1] + 4 * rem[:, 2]).long()
        return Grouping(coords=half[first].contiguous(), parent=inverse, slot=slot)
    return x.cache.get_or_create("group_parents", make)


def space_to_channel(x: SparseTensor) -> SparseTensor:
    """Pack ``x``'s features ``[N, C]`` into parents ``[P, 8·C]`` (slot order, zeros for absent children)."""
    g = group_parents(x)
    n, c = x.feats.shape
    out = x.feats.new_zeros(g.coords.shape[0], 8, c)
    out[g.parent, g.slot] = x.feats
    return SparseTensor(out.view(-1, 8 * c), g.coords, validate=False)
