"""Submanifold 3x3x3 sparse convolution (spec trellis2-inference.md §6.2): checks, plan and dispatch."""
from __future__ import annotations

import torch

from ..dispatch import KernelPolicy, choose
from .reference import submconv_reference

__all__ = ["SubmconvPlan", "prepare_submconv", "submconv", "submconv_reference"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class SubmconvPlan:
    """Everything the conv needs about one neighbour map, built once per voxel set and shared by all its convs.

    Holds ``nbr`` [N, 27] int32 and, for the Triton path, a private bounded cache: the Gray-code sorted row order,
    the transposed sorted map and per-tile offset lists (one entry per tile size used, at most a handful).
    """

    def __init__(self, nbr: torch.Tensor) -> None:
        self.nbr = nbr
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def n(self) -> int:
        return self.nbr.shape[0]

    @property
    def device(self) -> torch.device:
        return self.nbr.device

    def __repr__(self) -> str:
        return f"SubmconvPlan(n={self.n}, device={self.device}, cached={sorted(str(k) for k in self._cache)})"


def _check_nbr(nbr: object, where: str) -> None:
    if not isinstance(nbr, torch.Tensor):
        raise ValueError(f"{where}: nbr must be a torch.Tensor or a SubmconvPlan, got {type(nbr).__name__}.")
    if nbr.dtype != torch.int32:
        raise ValueError(f"{where}: nbr must be int32, got {nbr.dtype}.")
    if nbr.dim() != 2 or nbr.shape[1] != 27:
        raise ValueError(f"{where}: nbr must have shape [N, 27], got {list(nbr.shape)}.")


def prepare_submconv(nbr: torch.Tensor, *, policy: KernelPolicy | None = None) -> SubmconvPlan:
    """Build the reusable plan of neighbour map ``nbr`` [N, 27] int32 (cheap; the Triton data is built here on GPU)."""
    _check_nbr(nbr, "prepare_submconv")
    plan = SubmconvPlan(nbr.contiguous())
    if plan.n > 0 and nbr.device.type == "cuda" and choose("submconv", nbr.device, policy) == "triton":
        from .triton_impl import sorted_map

        sorted_map(plan)
    return plan


def _check(feats: object, plan: SubmconvPlan, weight: object, bias: object) -> None:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        raise ValueError(f"submconv: feats must be a [N, Ci] tensor, got {_describe(feats)}.")
    if feats.dtype not in _FLOATS:
        raise ValueError(f"submconv: feats must be float32, float16 or bfloat16, got {feats.dtype}.")
    n, ci = feats.shape
    if plan.n != n:
        raise ValueError(f"submconv: feats has {n} rows but the neighbour map has {plan.n}.")
    if plan.device != feats.device:
        raise ValueError(f"submconv: feats is on {feats.device} but the neighbour map is on {plan.device}.")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5 or tuple(weight.shape[1:4]) != (3, 3, 3):
        raise ValueError(f"submconv: weight must have shape [Co, 3, 3, 3, Ci], got {_describe(weight)}.")
    if weight.shape[4] != ci:
        raise ValueError(f"submconv: weight expects Ci={weight.shape[4]} input channels but feats has {ci}.")
    if weight.dtype != feats.dtype:
        raise ValueError(f"submconv: weight dtype {weight.dtype} differs from feats dtype {feats.dtype}; cast one.")
    if weight.device != feats.device:
        raise ValueError(f"submconv: weight is on {weight.device} but feats is on {feats.device}.")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"submconv: bias must have shape [Co={weight.shape[0]}], got {_describe(bias)}.")
        if bias.dtype not in _FLOATS:
            raise ValueError(f"submconv: bias must be a float tensor, got {bias.dtype}.")
        if bias.device != feats.device:
            raise ValueError(f"submconv: bias is on {bias.device} but feats is on {feats.device}.")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {list(x.shape)} ({x.dtype})"
    return type(x).__name__


def submconv(feats: torch.Tensor, plan_or_nbr: SubmconvPlan | torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None = None, *, policy: KernelPolicy | None = None) -> torch.Tensor:
    """Submanifold 3x3x3 convolution -> [N, Co] in ``feats.dtype`` (fp32 accumulation).

    Args:
        feats: [N, Ci] float32 / float16 / bfloat16.
        plan_or_nbr: a SubmconvPlan, or a neighbour map [N, 27] int32 (then the Triton path builds a plan per
            call: pass a plan when several convs share one map).
        weight: [Co, 3, 3, 3, Ci] official layout, same dtype as feats; ``weight[o, i, j, k, c]`` multiplies
            channel c of the neighbour at (x+i-1, y+j-1, z+k-1) (v = i*9 + j*3 + k).
        bias: [Co] or None. Missing neighbours contribute 0.
    """
    if isinstance(plan_or_nbr, SubmconvPlan):
        plan = plan_or_nbr
    else:
        _check_nbr(plan_or_nbr, "submconv")
        plan = SubmconvPlan(plan_or_nbr.contiguous())
    _check(feats, plan, weight, bias)
    if choose("submconv", feats.device, policy) == "triton":
        from .triton_impl import submconv_triton

        return submconv_triton(feats, plan, weight, bias)
    return submconv_reference(feats, plan.nbr, weight, bias)
