"""fp8 linear layer, emulated in PyTorch: the semantics oracle for the ``torch._scaled_mm`` path (runs anywhere).

Both operands are quantised to float8 e4m3 (``torch.float8_e4m3fn``, largest finite value 448) with one float32
scale per row: the activations per token (a row of ``x``), the weight per output channel (a row of ``weight``).
``scale = amax / 448`` maps each row's largest magnitude onto the largest fp8 value, so nothing saturates and the
relative rounding error of each element is at most 2^-4 (3 mantissa bits; smaller elements of a row lose more, down to
the fp8 subnormals). The quantised values are then dequantised and multiplied in float32, which is what a GPU fp8 GEMM
with fp32 accumulation computes up to summation order.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FP8_DTYPE", "FP8_MAX", "quantize_rowwise", "fp8_linear_reference"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
# An all-zero row has amax 0; flooring the scale at the smallest normal float32 keeps 0 / scale = 0 (no NaN) and
# still maps a row of tiny (even subnormal) values into range.
_MIN_SCALE = torch.finfo(torch.float32).tiny


def quantize_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise each row (last dimension) of ``x [..., K]`` to fp8 e4m3.

    Returns ``(q, scale)``: ``q [..., K]`` float8_e4m3fn and ``scale [..., 1]`` float32 with ``x ≈ q · scale``.
    Only tensor ops, no Python branching on values: safe to trace with ``torch.compile``.
    """
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(_MIN_SCALE)
    # x / (amax / 448) can round a hair above 448; e4m3fn has no infinity (out of range becomes NaN), so clamp
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """≈ ``F.linear(x, weight, bias)`` with both operands rounded to row-scaled fp8.

    ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None → ``[..., N]`` in ``x.dtype``. The product is taken in
    float32 from the dequantised operands; the bias is added in float32 (it is not quantised).
    """
    xq, xs = quantize_rowwise(x)
    wq, ws = quantize_rowwise(weight)
    out = (xq.float() * xs) @ (wq.float() * ws).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
