"""SparseTensor: active voxels of a batch of sparse 3-D grids with per-voxel features (spec §6.1).

``coords`` is int32 ``[N, 4]`` = (batch, x, y, z) with the rows of each batch element contiguous and batch ids
ascending; ``feats`` is ``[N, C...]``. Maps derived from the coordinates alone (neighbour maps, conv plans, RoPE
phases, sequence lengths) are kept in a :class:`DerivedCache` that belongs to the coordinate set: tensors made with
:meth:`SparseTensor.replace` (new features, same coordinates) share it, and any tensor built from new coordinates
starts with an empty one, so a cached map can never describe other voxels than the ones it is used with.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["SparseTensor", "DerivedCache"]


class DerivedCache:
    """A bounded LRU mapping from hashable keys to values derived from one coordinate set."""

    def __init__(self, max_entries: int = 32) -> None:
        if max_entries < 1:
            raise InputError("DerivedCache needs room for at least one entry")
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get_or_create(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """Return the value for ``key``, computing it with ``make()`` on a miss (evicting the oldest entry)."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        return list(self._items.keys())


def _check_coords(coords: Tensor) -> None:
    if not isinstance(coords, Tensor):
        raise InputError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise InputError(f"coords must be int32 (batch, x, y, z), got {coords.dtype}; convert with coords.int()")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise InputError(f"coords must have shape [N, 4] = (batch, x, y, z), got {list(coords.shape)}")


class SparseTensor:
    """Features on the active voxels of ``B`` sparse grids.

    Args:
        feats: ``[N, C...]`` features, one row per voxel.
        coords: ``[N, 4]`` int32 (batch, x, y, z); non-negative; rows grouped by batch in ascending batch order.
        validate: check the coordinates (costs one device sync). Internal code that derives coordinates from an
            already valid tensor passes ``False``.
    """

    __slots__ = ("feats", "coords", "_cache")

    def __init__(self, feats: Tensor, coords: Tensor, *, validate: bool = True,
                 _cache: DerivedCache | None = None) -> None:
        _check_coords(coords)
        if not isinstance(feats, Tensor):
            raise InputError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.dim() < 1 or feats.shape[0] != coords.shape[0]:
            raise InputError(
                f"feats must have one row per voxel: feats {list(feats.shape)} vs coords {list(coords.shape)}"
            )
        if feats.device != coords.device:
            raise InputError(f"feats are on {feats.device} but coords are on {coords.device}; move both to one device")
        if validate and coords.shape[0] > 0:
            if bool((coords < 0).any()):
                bad = coords[(coords < 0).any(dim=1)][0].tolist()
                raise InputError(f"coords must be non-negative; found row {bad}")
            batch = coords[:, 0]
            if bool((batch[1:] < batch[:-1]).any()):
                raise InputError(
                    "rows of one batch element must be contiguous and batch ids ascending; sort the rows by "
                    "coords[:, 0] (e.g. with a stable sort) before building the SparseTensor"
                )
        self.feats = feats
        self.coords = coords
        self._cache = _cache if _cache is not None else DerivedCache()

    # ------------------------------------------------------------------ construction
    def replace(self, feats: Tensor, coords: Tensor | None = None) -> "SparseTensor":
        """A new tensor with ``feats`` on the same voxels (sharing the derived cache), or on new ``coords``."""
        if coords is None:
            if feats.shape[0] != self.coords.shape[0]:
                raise InputError(
                    f"replace() without coords needs one feature row per voxel: got {feats.shape[0]} rows for "
                    f"{self.coords.shape[0]} voxels"
                )
            return SparseTensor(feats, self.coords, validate=False, _cache=self._cache)
        return SparseTensor(feats, coords)

    # ------------------------------------------------------------------ shape
    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def cache(self) -> DerivedCache:
        """The derived-map cache shared by every tensor on these exact coordinates."""
        return self._cache

    @property
    def batch_size(self) -> int:
        return len(self.seqlens)

    @property
    def seqlens(self) -> list[int]:
        """Number of voxels of each batch element (``B = max batch id + 1``; absent ids have 0 voxels)."""
        def make() -> list[int]:
            if self.num_voxels == 0:
                return []
            return torch.bincount(self.coords[:, 0].long()).tolist()
        return self._cache.get_or_create("seqlens", make)

    @property
    def layout(self) -> list[slice]:
        """Row slice of each batch element."""
        def make() -> list[slice]:
            out, start = [], 0
            for n in self.seqlens:
                out.append(slice(start, start + n))
                start += n
            return out
        return self._cache.get_or_create("layout", make)

    def cu_seqlens(self) -> Tensor:
        """Cumulative sequence lengths ``[B+1]`` int32 on the tensor's device (for varlen attention)."""
        def make() -> Tensor:
            lens = torch.tensor([0] + self.seqlens, dtype=torch.int64)
            return torch.cumsum(lens, 0).to(torch.int32).to(self.device)
        return self._cache.get_or_create(("cu_seqlens", str(self.device)), make)

    def batch_index(self) -> Tensor:
        """Row → batch id map ``[N]`` int64 (for per-batch broadcasting)."""
        return self._cache.get_or_create("batch_index", lambda: self.coords[:, 0].long())

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``max(coords[:, 1:]) + 1`` per axis (data-dependent, as in the official code)."""
        def make() -> tuple[int, int, int]:
            if self.num_voxels == 0:
                return (0, 0, 0)
            return tuple(int(v) + 1 for v in self.coords[:, 1:].amax(dim=0).tolist())
        return self._cache.get_or_create("spatial_shape", make)

    # ------------------------------------------------------------------ element-wise helpers
    def broadcast_batch(self, per_batch: Tensor) -> Tensor:
        """Expand a ``[B, C...]`` tensor to one row per voxel."""
        if per_batch.shape[0] != self.batch_size:
            raise InputError(f"expected a leading batch dim of {self.batch_size}, got {list(per_batch.shape)}")
        return per_batch[self.batch_index()]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SparseTensor":
        """Move/cast the features (and move the coordinates). A device move starts a fresh cache."""
        feats = self.feats.to(device=device, dtype=dtype)
        if feats.device == self.coords.device:
            return self.replace(feats)
        return SparseTensor(feats, self.coords.to(feats.device), validate=False)

    def __repr__(self) -> str:
        return (f"SparseTensor(voxels={self.num_voxels}, feats={list(self.feats.shape)}, dtype={self.dtype}, "
                f"batch={self.seqlens}, device={self.device})")
