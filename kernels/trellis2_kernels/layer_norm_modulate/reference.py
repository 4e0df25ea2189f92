"""Non-affine LayerNorm followed by adaLN modulation in PyTorch: the semantics the Triton kernel must reproduce.

The DiT block's ``modulate(LayerNorm32(x), shift, scale)`` (spec §4.2): the norm in float32 rounded to the input dtype
(``LayerNorm32`` returns the input dtype), then ``h·(1 + scale) + shift`` in float32 rounded once, which is how
``torch.compile`` evaluates the half-precision modulation.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_norm_modulate_reference(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """``LN(x)·(1 + scale) + shift`` for ``x [B, N, C]``, ``shift``/``scale`` ``[B, C]`` → ``[B, N, C]`` in x.dtype."""
    h = F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype).float()
    return (h * (1 + scale.float()[:, None, :]) + shift.float()[:, None, :]).to(x.dtype)
