"""The sparse-voxel engine: SparseTensor, submanifold convolution, channel↔space resampling, attention, layers.

It knows no model; models are built from these parts in ``trellis2_core.models``.
"""
from __future__ import annotations

from .attention import attention, varlen_attention
from .conv import SubMConv3d, neighbor_map, submanifold_conv3d
from .layers import LayerNorm32, SparseLinear, gelu_tanh, silu, sparse_map
from .resample import channel_to_space, space_to_channel, subdivide
from .tensor import DerivedCache, SparseTensor

__all__ = [
    "SparseTensor", "DerivedCache", "SubMConv3d", "submanifold_conv3d", "neighbor_map", "attention",
    "varlen_attention", "SparseLinear", "LayerNorm32", "silu", "gelu_tanh", "sparse_map", "channel_to_space",
    "space_to_channel", "subdivide",
]
