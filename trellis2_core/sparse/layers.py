"""Point-wise layers that work on a SparseTensor's features or on plain tensors (spec §4–5).

These hold official weights under the official key names (``weight``/``bias``), so they subclass the matching
``torch.nn`` modules. Norms compute in float32 and return the input dtype, as the official ``*32`` layers do.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tensor import SparseTensor

__all__ = ["SparseLinear", "LayerNorm32", "sparse_map", "silu", "gelu_tanh"]

T = TypeVar("T", Tensor, SparseTensor)


def sparse_map(fn: Callable[[Tensor], Tensor], x: T) -> T:
    """Apply a row-wise function to a tensor, or to a SparseTensor's features (keeping its voxels)."""
    if isinstance(x, SparseTensor):
        return x.replace(fn(x.feats))
    return fn(x)


class SparseLinear(nn.Linear):
    """``nn.Linear`` on the features of a SparseTensor (or on a plain tensor)."""

    def forward(self, x):  # type: ignore[override]
        return sparse_map(super().forward, x)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dim computed in float32; returns the input dtype."""

    def _norm(self, t: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(t.float(), self.normalized_shape, weight, bias, self.eps).to(t.dtype)

    def forward(self, x):  # type: ignore[override]
        return sparse_map(self._norm, x)


def silu(x: T) -> T:
    """SiLU on a tensor or a SparseTensor's features."""
    return sparse_map(F.silu, x)


def gelu_tanh(x: T) -> T:
    """GELU with the tanh approximation (the DiT MLP activation) on a tensor or a SparseTensor's features."""
    return sparse_map(lambda t: F.gelu(t, approximate="tanh"), x)
