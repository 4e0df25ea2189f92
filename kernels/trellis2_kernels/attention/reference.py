"""Exact attention in PyTorch: the semantics the Triton kernel must reproduce."""
from __future__ import annotations

import torch
from torch import Tensor


def attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(q·kᵀ·scale)·v`` per batch element and head, computed in float32.

    ``q [B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` → ``[B, Lq, H, D]`` in ``q.dtype``.
    """
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    w = torch.softmax((qf @ kf.transpose(-1, -2)) * scale, dim=-1)
    return (w @ vf).transpose(1, 2).to(q.dtype)
