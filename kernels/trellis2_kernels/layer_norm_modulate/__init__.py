"""Non-affine LayerNorm + adaLN modulation of the DiT blocks in one pass: a Triton kernel and its PyTorch reference."""
from __future__ import annotations

import torch

from ..dispatch import KernelPolicy, choose
from .reference import layer_norm_modulate_reference

__all__ = ["layer_norm_modulate", "layer_norm_modulate_reference"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 8192  # one row must fit a register tile


def _check(x: object, shift: object, scale: object) -> None:
    if not all(isinstance(t, torch.Tensor) for t in (x, shift, scale)):
        raise ValueError("layer_norm_modulate: x, shift and scale must be torch.Tensors.")
    if x.dim() != 3:
        raise ValueError(f"layer_norm_modulate: x must be [B, N, C]; got {list(x.shape)}.")
    if shift.shape != (x.shape[0], x.shape[2]) or scale.shape != shift.shape:
        raise ValueError(f"layer_norm_modulate: shift/scale must be [B, C] = [{x.shape[0]}, {x.shape[2]}]; got "
                         f"{list(shift.shape)}, {list(scale.shape)}.")
    if x.dtype not in _DTYPES:
        raise ValueError(f"layer_norm_modulate: x must be float16/bfloat16/float32; got {x.dtype}.")
    if not (x.device == shift.device == scale.device):
        raise ValueError(f"layer_norm_modulate: x, shift, scale are on {x.device}, {shift.device}, {scale.device}.")


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, *,
                        policy: KernelPolicy | None = None) -> torch.Tensor:
    """``LN(x)·(1 + scale) + shift`` (non-affine LN in float32, rounded to ``x.dtype`` before the modulation).

    ``x [B, N, C]``, ``shift``/``scale`` ``[B, C]`` (one vector per batch element) → contiguous ``[B, N, C]``.
    The Triton kernel runs for widths up to 8192; wider rows use the reference.
    """
    _check(x, shift, scale)
    if 0 < x.shape[-1] <= MAX_WIDTH and choose("layer_norm_modulate", x.device, policy) == "triton":
        from .triton_impl import layer_norm_modulate_triton

        return layer_norm_modulate_triton(x.contiguous(), shift.contiguous(), scale.contiguous(), eps)
    return layer_norm_modulate_reference(x, shift, scale, eps)
