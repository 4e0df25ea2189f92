"""Submanifold 3x3x3 sparse convolution on a SparseTensor (spec §6.2).

Outputs exist exactly at the input's active voxels; a missing neighbour contributes zero; weight layout is the
official ``[Co, 3, 3, 3, Ci]`` (``weight[o, i, j, k, c]`` multiplies channel ``c`` of the neighbour at
``(x+i-1, y+j-1, z+k-1)``). The neighbour map and the kernel's plan are built once per voxel set and cached on the
tensor, so every conv of a decoder level shares them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._kernels import load as _load_kernels
from ..errors import InputError
from .tensor import SparseTensor

__all__ = ["neighbor_map", "submconv_plan", "submanifold_conv3d", "SubMConv3d"]


def _ops():
    _load_kernels()
    import trellis2_kernels.neighbor_map as nm
    import trellis2_kernels.submconv as sc
    return nm, sc


def neighbor_map(x: SparseTensor) -> Tensor:
    """``[N, 27]`` int32 row index of each 3x3x3 neighbour (-1 = absent), cached on ``x``'s voxel set."""
    nm, _ = _ops()
    return x.cache.get_or_create(("neighbor_map", 3), lambda: nm.build_neighbor_map(x.coords))


def submconv_plan(x: SparseTensor):
    """The submanifold-conv plan for ``x``'s voxel set (cached; shared by all convs at this level)."""
    _, sc = _ops()
    return x.cache.get_or_create(("submconv_plan", 3), lambda: sc.prepare_submconv(neighbor_map(x)))


def submanifold_conv3d(x: SparseTensor, weight: Tensor, bias: Tensor | None = None) -> SparseTensor:
    """Apply a submanifold conv with ``weight [Co,3,3,3,Ci]`` and ``bias [Co]`` to ``x`` (feats ``[N, Ci]``)."""
    _, sc = _ops()
    if x.feats.dim() != 2:
        raise InputError(f"submanifold_conv3d needs 2-D feats [N, Ci], got {list(x.feats.shape)}")
    if weight.dtype != x.feats.dtype:  # the kernel contract wants matching dtypes; the dtype policy normally ensures it
        weight = weight.to(x.feats.dtype)
    out = sc.submconv(x.feats, submconv_plan(x), weight, bias)
    return x.replace(out)


class SubMConv3d(nn.Module):
    """Submanifold 3x3x3 convolution module; state-dict keys ``weight [Co,3,3,3,Ci]`` and ``bias [Co]``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        if self.weight.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = 27 * self.in_channels
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.feats.shape[-1] != self.in_channels:
            raise InputError(f"SubMConv3d expects {self.in_channels} input channels, got {x.feats.shape[-1]}")
        return submanifold_conv3d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=3, bias={self.bias is not None}"
