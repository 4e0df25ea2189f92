"""The self-attention's q/k RMS norm and 3-D RoPE as one kernel pass over q and one over k.

Unfused, ``MultiHeadRMSNorm`` and ``apply_rope`` read q and k out of the qkv projection, write the normalised
halves, read them back for the rotation and write them again (Inductor's fused version of that measured 0.53 ms per
20 K-token CFG pair on an H200, ~3× its memory-bound time). ``trellis2_kernels.qk_norm_rope`` does both steps
per tile in registers, with the model's rounding to the trunk dtype between them.

The op is registered as ``trellis2::qk_norm_rope`` so that ``torch.compile`` calls it as one opaque kernel. Off
CUDA the kernel package dispatches to its PyTorch reference, which is the unfused definition.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _kernels
from ..errors import InputError

__all__ = ["qk_norm_rope"]


@torch.library.custom_op("trellis2::qk_norm_rope", mutates_args=())
def _qk_norm_rope(q: Tensor, k: Tensor, gamma_q: Tensor, gamma_k: Tensor, cos: Tensor, sin: Tensor,
                  scale: float) -> tuple[Tensor, Tensor]:
    _kernels.load()  # registers the package trellis2_kernels
    from trellis2_kernels.qk_norm_rope import rms_norm_rope

    return rms_norm_rope(q, gamma_q, cos, sin, scale), rms_norm_rope(k, gamma_k, cos, sin, scale)


@_qk_norm_rope.register_fake
def _(q: Tensor, k: Tensor, gamma_q: Tensor, gamma_k: Tensor, cos: Tensor, sin: Tensor,
      scale: float) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


def qk_norm_rope(q: Tensor, k: Tensor, gamma_q: Tensor, gamma_k: Tensor, cos: Tensor, sin: Tensor,
                 scale: float) -> tuple[Tensor, Tensor]:
    """``rope(rms_norm(q))``, ``rope(rms_norm(k))`` for ``q``, ``k`` ``[B, N, H, D]`` or ``[N, H, D]`` (packed
    sparse tokens), ``gamma_* [H, D]``, ``cos``/``sin`` ``[N, D/2]``; contiguous outputs in the input dtype."""
    if q.shape != k.shape or q.dim() not in (3, 4):
        raise InputError(f"qk_norm_rope: q and k must both be [B, N, H, D] or [N, H, D]; got {list(q.shape)} and "
                         f"{list(k.shape)}")
    if q.dim() == 3:
        qo, ko = _qk_norm_rope(q[None], k[None], gamma_q, gamma_k, cos, sin, float(scale))
        return qo[0], ko[0]
    return _qk_norm_rope(q, k, gamma_q, gamma_k, cos, sin, float(scale))
