"""q/k RMS norm followed by RoPE in PyTorch: the semantics the Triton kernel must reproduce.

The two steps of the DiT's self-attention (spec §4.2, §4.3), written as the model writes them: the norm in float32
rounded to the input dtype, then the rotation of adjacent pairs in float32 rounded again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm_rope_reference(x: Tensor, gamma: Tensor, cos: Tensor, sin: Tensor, scale: float) -> Tensor:
    """``rope(normalize(x) · gamma · scale)`` for ``x [B, N, H, D]``, ``gamma [H, D]``, ``cos``/``sin`` ``[N, D/2]``.

    ``normalize`` is ``F.normalize`` over the head dim (L2 norm clamped below at 1e-12). Returns ``[B, N, H, D]``
    in ``x.dtype``.
    """
    y = (F.normalize(x.float(), dim=-1) * gamma.float() * scale).to(x.dtype)
    pairs = y.float().unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :].float(), sin[:, None, :].float()  # [N, 1, D/2]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).to(x.dtype)
