"""q/k RMS norm + 3-D RoPE of the DiT self-attention in one pass: a Triton kernel and its PyTorch reference."""
from __future__ import annotations

import torch

from ..dispatch import KernelPolicy, choose
from .reference import rms_norm_rope_reference

__all__ = ["rms_norm_rope", "rms_norm_rope_reference"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(x: object, gamma: object, cos: object, sin: object) -> None:
    if not all(isinstance(t, torch.Tensor) for t in (x, gamma, cos, sin)):
        raise ValueError("rms_norm_rope: x, gamma, cos and sin must be torch.Tensors.")
    if x.dim() != 4:
        raise ValueError(f"rms_norm_rope: x must be [B, N, H, D]; got {list(x.shape)}.")
    _, n, h, d = x.shape
    if d % 2:
        raise ValueError(f"rms_norm_rope: the head dim must be even to form rotation pairs; got {d}.")
    if gamma.shape != (h, d):
        raise ValueError(f"rms_norm_rope: gamma must be [H, D] = [{h}, {d}]; got {list(gamma.shape)}.")
    if cos.shape != (n, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"rms_norm_rope: cos/sin must be [N, D/2] = [{n}, {d // 2}]; got {list(cos.shape)}, "
                         f"{list(sin.shape)}.")
    if x.dtype not in _DTYPES:
        raise ValueError(f"rms_norm_rope: x must be float16/bfloat16/float32; got {x.dtype}.")
    if not (x.device == gamma.device == cos.device == sin.device):
        raise ValueError(f"rms_norm_rope: x, gamma, cos, sin are on {x.device}, {gamma.device}, {cos.device}, "
                         f"{sin.device}.")


def rms_norm_rope(x: torch.Tensor, gamma: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float, *,
                  policy: KernelPolicy | None = None) -> torch.Tensor:
    """``rope(normalize(x) · gamma · scale)``, rounded to ``x.dtype`` after the norm and after the rotation.

    ``x [B, N, H, D]`` (any strides with a contiguous head dim: e.g. the q or k view of a fused qkv projection),
    ``gamma [H, D]``, ``cos``/``sin`` ``[N, D/2]`` (one row per token, shared by the batch). Returns a contiguous
    ``[B, N, H, D]``. The Triton kernel runs for power-of-two head dims from 16 to 256; other shapes use the reference.
    """
    _check(x, gamma, cos, sin)
    d = x.shape[-1]
    if 16 <= d <= 256 and d & (d - 1) == 0 and choose("rms_norm_rope", x.device, policy) == "triton":
        from .triton_impl import rms_norm_rope_triton

        x = x if x.stride(-1) == 1 else x.contiguous()
        g, c, s = (t.float().contiguous() for t in (gamma, cos, sin))
        return rms_norm_rope_triton(x, g, c, s, scale)
    return rms_norm_rope_reference(x, gamma, cos, sin, scale)
