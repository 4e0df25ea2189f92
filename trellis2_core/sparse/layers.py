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

__all__ = ["SparseLinear", "LayerNorm32", "sparse_map", "silu", "gelu_tanh", "rowwise_in_chunks"]

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


#: float32 elements per row chunk of a half-precision LayerNorm32 (64 MB of fp32 temporaries)
NORM_CHUNK_ELEMENTS = 1 << 24


def rowwise_in_chunks(fn: Callable[[Tensor], Tensor], t: Tensor, out_dtype: torch.dtype, out_cols: int) -> Tensor:
    """``fn(t)`` for a row-wise ``fn`` on a 2-D ``t``, evaluated over row chunks of :data:`NORM_CHUNK_ELEMENTS`
    into one output ``[N, out_cols]``, so that the float32 temporaries of ``fn`` stay at one chunk (a row-wise norm
    computes each row exactly as unchunked; a GEMM inside ``fn`` may round differently for another row count, as
    any GEMM library may). Not used while tracing for ``torch.compile``, which fuses those temporaries away."""
    rows = max(1, NORM_CHUNK_ELEMENTS // max(1, t.shape[-1]))
    if t.dim() != 2 or t.shape[0] <= rows or torch.compiler.is_compiling():
        return fn(t).to(out_dtype)
    out = torch.empty(t.shape[0], out_cols, dtype=out_dtype, device=t.device)
    for start in range(0, t.shape[0], rows):
        out[start:start + rows] = fn(t[start:start + rows])
    return out


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dim computed in float32; returns the input dtype.

    Large 2-D half-precision inputs (a decoder's finest level: 2.5 M voxels × 64 channels at 1024) are normalised in
    row chunks: unchunked, the fp32 copy and fp32 result alone take 4× the input's size (1.3 GB there)."""

    def _norm(self, t: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None

        def norm(rows: Tensor) -> Tensor:
            return F.layer_norm(rows.float(), self.normalized_shape, weight, bias, self.eps)
        return rowwise_in_chunks(norm, t, t.dtype, t.shape[-1])

    def forward(self, x):  # type: ignore[override]
        return sparse_map(self._norm, x)


def silu(x: T) -> T:
    """SiLU on a tensor or a SparseTensor's features."""
    return sparse_map(F.silu, x)


def gelu_tanh(x: T) -> T:
    """GELU with the tanh approximation (the DiT MLP activation) on a tensor or a SparseTensor's features."""
    return sparse_map(lambda t: F.gelu(t, approximate="tanh"), x)
