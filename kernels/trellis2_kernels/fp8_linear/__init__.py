"""fp8 linear layer ``≈ F.linear(x, weight, bias)`` with row-wise-scaled float8 e4m3 operands (approximate).

Dispatch: ``torch._scaled_mm`` (``scaled_mm_impl.py``) on NVIDIA GPUs of compute capability ≥ 8.9 (Ada, Hopper,
Blackwell) for bfloat16 inputs with K and N multiples of 16; the PyTorch emulation (``reference.py``, same
quantisation, fp32 product) everywhere else: CPU, MPS, ROCm (whose fp8 formats differ), older GPUs, other dtypes and
shapes. ``TRELLIS2_KERNELS`` (``kernels/dispatch.py``) applies as for the Triton ops: ``reference`` forces the
emulation; ``triton`` forces the GPU path (here ``_scaled_mm``, not Triton) and raises where it cannot run.

Traceable by ``torch.compile``: the choice depends only on device, dtype, shapes and the environment (read when
dynamo traces, so a change of ``TRELLIS2_KERNELS`` after the first compiled call is not seen by that graph), and the
weight is quantised on every call (no cache).
"""
from __future__ import annotations

import torch

from ..dispatch import DEFAULT_POLICY, KernelPolicy
from .reference import FP8_DTYPE, FP8_MAX, fp8_linear_reference, quantize_rowwise

__all__ = ["fp8_linear", "fp8_linear_reference", "quantize_rowwise", "scaled_mm_unsupported", "FP8_DTYPE", "FP8_MAX"]

_MIN_CAPABILITY = (8, 9)  # first NVIDIA architecture with fp8 tensor cores (Ada); row-wise scaling from there on


@torch.compiler.assume_constant_result
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _check(x: object, weight: object, bias: object) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise ValueError("fp8_linear: x and weight must be torch.Tensors.")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise ValueError(f"fp8_linear: bias must be a tensor or None, got {type(bias).__name__}.")
    if not x.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"fp8_linear: x and weight must be floating point, got {x.dtype} and {weight.dtype}.")
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or weight.shape[1] == 0:
        raise ValueError(f"fp8_linear: need x [..., K] and weight [N, K] with K >= 1, got {list(x.shape)} and "
                         f"{list(weight.shape)}.")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"fp8_linear: bias must be [N] = [{weight.shape[0]}], got {list(bias.shape)}.")
    if x.device != weight.device or (bias is not None and bias.device != x.device):
        raise ValueError(f"fp8_linear: x is on {x.device} but weight on {weight.device}"
                         + ("" if bias is None else f" and bias on {bias.device}") + ".")


def scaled_mm_unsupported(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why the ``torch._scaled_mm`` path cannot run these operands here, or None when it can."""
    if x.device.type != "cuda" or torch.version.hip is not None:
        return f"device {x.device} is not an NVIDIA GPU"
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if _capability(index) < _MIN_CAPABILITY:
        return f"{x.device} has compute capability below {_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]} (no fp8 GEMM)"
    if x.dtype != torch.bfloat16:
        return f"x is {x.dtype}; the row-wise fp8 GEMM writes bfloat16 only"
    if weight.shape[1] % 16 or weight.shape[0] % 16:
        return f"K = {weight.shape[1]} and N = {weight.shape[0]} must be multiples of 16"
    if x.numel() == 0:
        return "x is empty"
    return None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               policy: KernelPolicy | None = None) -> torch.Tensor:
    """≈ ``F.linear(x, weight, bias)``: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` → ``[..., N]`` in ``x.dtype``.

    Activations are quantised per token and the weight per output channel to float8 e4m3 (``scale = amax / 448``),
    multiplied with fp32 accumulation and rescaled; expect a relative error of a few percent (about 3–4 % in
    Frobenius norm on Gaussian data), not bit-level agreement with ``F.linear``.
    """
    _check(x, weight, bias)
    mode = (policy or DEFAULT_POLICY).resolved_mode()
    if mode != "reference":
        why_not = scaled_mm_unsupported(x, weight)
        if why_not is None:
            from .scaled_mm_impl import fp8_linear_scaled_mm

            return fp8_linear_scaled_mm(x, weight, bias)
        if mode == "triton":
            raise RuntimeError(f"TRELLIS2_KERNELS=triton forces the fp8 GPU GEMM, which cannot run here: {why_not}. "
                               "Unset TRELLIS2_KERNELS to fall back to the emulation.")
    return fp8_linear_reference(x, weight, bias)
