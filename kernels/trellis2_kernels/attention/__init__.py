"""Exact dense attention: a Triton flash-attention kernel and its PyTorch reference (``[B, L, H, D]`` layout)."""
from __future__ import annotations

import math

import torch

from ..dispatch import KernelPolicy, choose
from .reference import attention_reference

__all__ = ["flash_attention", "attention_reference"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(q: object, k: object, v: object) -> None:
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise ValueError("flash_attention: q, k and v must be torch.Tensors.")
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"flash_attention: expected q [B, Lq, H, D] and k, v [B, Lk, H, D]; got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}.")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"flash_attention: q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v are on {q.device}, {k.device}, {v.device}.")
    if k.shape[1] == 0:
        raise ValueError("flash_attention: no keys to attend to (Lk = 0).")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                    policy: KernelPolicy | None = None) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` for ``q [B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` → ``[B, Lq, H, D]``.

    The Triton kernel runs for head dims that are powers of two from 16 to 256; other shapes use the reference.
    """
    _check(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    d = q.shape[-1]
    kernel_ok = 16 <= d <= 256 and d & (d - 1) == 0 and q.shape[1] > 0
    if kernel_ok and choose("attention", q.device, policy) == "triton":
        from .triton_impl import attention_triton

        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        return attention_triton(q, k, v, scale)
    return attention_reference(q, k, v, scale)
