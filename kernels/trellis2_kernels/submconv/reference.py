"""PyTorch reference for the submanifold 3x3x3 convolution: im2col gather + one GEMM per row chunk.

Semantics (spec trellis2-inference.md §6.2): ``out[i, o] = bias[o] + sum_{v, c} weight[o, v, c] * feats[nbr[i, v], c]``
with ``weight`` viewed as ``[Co, 27, Ci]`` and a missing neighbour (``nbr == -1``) contributing 0.
"""
from __future__ import annotations

import torch

_TEMP_BYTES = 256 << 20  # bound on the gathered im2col block per chunk


def submconv_reference(feats: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Submanifold conv of ``feats`` [N, Ci] through ``nbr`` [N, 27] with ``weight`` [Co, 3, 3, 3, Ci] -> [N, Co].

    Accumulates in fp32: half inputs on the CPU are computed in fp32 and rounded once at the end; on a GPU half
    inputs go to the device GEMM (fp32 accumulation, result rounded to the input dtype) and the bias is added in
    fp32 before the final rounding.
    """
    n, ci = feats.shape
    co = weight.shape[0]
    out_dtype = feats.dtype
    if n == 0:
        return torch.empty((0, co), dtype=out_dtype, device=feats.device)
    compute = torch.float32 if (feats.device.type == "cpu" or out_dtype == torch.float32) else out_dtype
    # A zero row at index n stands for every missing neighbour.
    src = torch.cat([feats.to(compute), feats.new_zeros((1, ci), dtype=compute)], dim=0)
    w = weight.reshape(co, 27 * ci).to(compute)
    b = None if bias is None else bias.to(torch.float32)
    out = torch.empty((n, co), dtype=out_dtype, device=feats.device)
    rows = max(1, _TEMP_BYTES // (27 * ci * src.element_size()))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        idx = nbr[s:e].to(torch.int64)
        idx = torch.where(idx < 0, n, idx)
        cols = src[idx].reshape(e - s, 27 * ci)  # [rows, 27*Ci], v-major like the weight
        acc = cols @ w.t()  # the device GEMM accumulates half inputs in fp32
        if b is not None:
            acc = acc.float() + b
        out[s:e] = acc.to(out_dtype)
    return out

