"""``GELU_tanh(x·Wᵀ + b)`` in one GEMM: the DiT MLP's first layer with its activation in the GEMM epilogue.

Unfused, the MLP's hidden activations (``[tokens, 8192]``, 655 MB at 40 K tokens in bf16) are written by the GEMM,
read back and written again by the activation, and both buffers are alive at once. On CUDA, cuBLASLt applies the
bias and the tanh-approximated GELU to the fp32 accumulator before the one bf16 store (``torch._addmm_activation``):
one pass less over the largest tensor of the block and one hidden-sized buffer less at the peak.

The op is registered as ``trellis2::linear_gelu_tanh`` so that ``torch.compile`` calls it as one opaque kernel
(Inductor would otherwise decompose ``_addmm_activation`` back into a GEMM and a pointwise pass). Everywhere else
(CPU, fp32) it is the plain reference: ``_addmm_activation`` uses the exact erf GELU on CPU, not the tanh form the
model needs, so it is used only on CUDA half-precision inputs (NVIDIA; bfloat16 from compute capability 8.0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..capabilities import device_traits, fused_mlp_runs
from ..errors import InputError

__all__ = ["linear_gelu_tanh", "linear_gelu_tanh_reference"]


def linear_gelu_tanh_reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The unfused definition: ``gelu(linear(x, weight, bias), approximate='tanh')``."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def _epilogue_ok(x: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Shapes are checked by :func:`linear_gelu_tanh`; this is about where cuBLASLt's tanh epilogue applies
    (:func:`trellis2_core.capabilities.fused_mlp_runs`: NVIDIA, fp16, or bf16 from sm80)."""
    return (x.is_cuda and weight.dtype == x.dtype and bias.dtype == x.dtype and x.numel() > 0
            and fused_mlp_runs(device_traits(x.device), x.dtype))


@torch.library.custom_op("trellis2::linear_gelu_tanh", mutates_args=())
def _linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if not _epilogue_ok(x, weight, bias):
        return linear_gelu_tanh_reference(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(bias, flat, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@_linear_gelu_tanh.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``gelu(x·weightᵀ + bias, approximate='tanh')``; one cuBLASLt GEMM with a GELU epilogue on CUDA fp16/bf16."""
    if x.shape[-1] != weight.shape[1] or bias.shape != weight.shape[:1]:
        raise InputError(f"linear_gelu_tanh: x {list(x.shape)}, weight {list(weight.shape)} and bias "
                         f"{list(bias.shape)} do not fit")
    return _linear_gelu_tanh(x, weight, bias)
