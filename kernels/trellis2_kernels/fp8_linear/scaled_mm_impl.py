"""fp8 linear layer on the GPU: row-wise quantisation (as in ``reference.py``) + ``torch._scaled_mm``.

``torch._scaled_mm`` with row-wise scales (``scale_a [M, 1]``, ``scale_b [1, N]``, both float32) runs cuBLASLt/CUTLASS
fp8 tensor-core GEMMs with fp32 accumulation and applies both scales and the bias in its epilogue. It needs compute
capability ≥ 8.9, ``mat1`` row-major, ``mat2`` column-major, K and N multiples of 16 and a bfloat16 output (the
row-wise kernels write bf16 only); ``__init__.py`` checks all of that before calling here. Only traceable tensor ops,
so the whole function (quantisation included) compiles into the caller's graph under ``torch.compile``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .reference import quantize_rowwise

__all__ = ["fp8_linear_scaled_mm"]


def fp8_linear_scaled_mm(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                         fast_accum: bool = False) -> Tensor:
    """``x [..., K]`` bf16, ``weight [N, K]``, ``bias [N]`` or None → ``[..., N]`` bf16 (CUDA, see module doc).

    ``fast_accum``: let Hopper accumulate without periodic promotion to fp32 (faster, slightly less accurate).
    """
    k, n = x.shape[-1], weight.shape[0]
    xq, xs = quantize_rowwise(x.reshape(-1, k))  # [M, K] fp8, [M, 1] fp32
    wq, ws = quantize_rowwise(weight)  # [N, K] fp8, [N, 1] fp32
    out = torch._scaled_mm(
        xq.contiguous(), wq.contiguous().t(),  # [K, N] column-major, as the fp8 kernels want
        scale_a=xs, scale_b=ws.reshape(1, n),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16, use_fast_accum=fast_accum,
    )  # [M, N]
    return out.reshape(*x.shape[:-1], n)
