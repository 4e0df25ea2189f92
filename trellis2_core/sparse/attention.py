"""Exact scaled-dot-product attention for dense batches and for variable-length sequences (spec §6.5).

One API, several backends, all computing ``softmax(q·kᵀ·scale)·v`` per sequence with no cross-sequence leakage:

* ``sdpa``       - ``torch.nn.functional.scaled_dot_product_attention``: on CUDA PyTorch picks its fastest fused
                   kernel (cuDNN / flash / mem-efficient); on CPU/MPS its math kernels. Varlen input with equal
                   lengths is run as one dense batch; ragged input loops over sequences.
* ``flash_attn`` - the ``flash_attn`` package's varlen kernel (CUDA, fp16/bf16), when installed.
* ``fa4``        - FlashAttention-4 (the optional ``flash-attn-4`` package, ``flash_attn.cute``; CuTe-DSL kernels
                   compiled at run time, no build step) for fp16/bf16 CUDA tensors on compute capability ≥ 9.0 with
                   a head size it has (``capabilities.fa4_runs``), as one opaque op under ``torch.compile``; SDPA
                   elsewhere (CPU, fp32, older GPUs).
* ``triton``     - the pack's Triton flash-attention kernel (``trellis2_kernels.attention``; its PyTorch reference
                   where Triton cannot run), as one opaque op under ``torch.compile``.
* ``naive``      - explicit matmul + softmax in float32 (the test oracle).

``auto`` uses dense SDPA whenever the sequences have equal length (the usual single-sample case, where the
fused cuDNN kernel is the fastest exact attention measured on an H100), otherwise ``flash_attn`` when it is installed
and can run (``capabilities.flash_attn_runs``: sm80+, fp16/bf16), otherwise per-sequence SDPA.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _kernels
from ..capabilities import device_traits, fa4_runs, flash_attn_runs
from ..errors import BackendError, InputError

__all__ = ["AttentionBackend", "attention", "varlen_attention", "flash_attn_available", "fa4_available"]

AttentionBackend = Literal["auto", "sdpa", "flash_attn", "fa4", "triton", "naive"]
_BACKENDS = ("auto", "sdpa", "flash_attn", "fa4", "triton", "naive")
_FA4_MISSING = ("attention backend 'fa4' needs the optional package flash-attn-4 (pip install flash-attn-4), which "
                "failed to import ({err}); install it, or choose attention_kernel='cudnn'.")


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """True when the optional ``flash_attn`` package (FlashAttention-2) imports with its varlen kernel.

    FlashAttention-4 installs only the namespace ``flash_attn.cute``, so a bare ``import flash_attn`` is not enough.
    """
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except ImportError:
        return False
    return True


def _import_fa4():
    """``flash_attn.cute.flash_attn_func``, with FlashAttention-4's on-disk kernel cache on unless the user set it.

    FA4 compiles its kernels at run time (3.9 s on an H200 for the DiT's head size, once per process and
    configuration); the disk cache (``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED``, in the temp folder) makes that once
    per machine.
    """
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    from flash_attn.cute import flash_attn_func
    return flash_attn_func


@functools.lru_cache(maxsize=1)
def fa4_available() -> bool:
    """True when the optional FlashAttention-4 package (``flash_attn.cute``) imports."""
    try:
        _import_fa4()
    except Exception:  # noqa: BLE001 - a broken CuTe-DSL install raises more than ImportError
        return False
    return True


def preload_fa4() -> None:
    """Import FlashAttention-4 in a background thread if it is installed (its CuTe-DSL import takes ~3 s), so that
    it overlaps work that mostly waits (weight loading) instead of delaying the first generation; a later
    :func:`fa4_available` then returns at once (or waits for that import under Python's import lock). At most one
    such thread per process."""
    with _PRELOAD_LOCK:
        if _PRELOAD or importlib.util.find_spec("flash_attn") is None:
            return
        thread = threading.Thread(target=fa4_available, name="trellis2-fa4-import", daemon=True)
        _PRELOAD.append(thread)
    thread.start()


_PRELOAD: list[threading.Thread] = []  # the one preload thread (bounded: at most one per process)
_PRELOAD_LOCK = threading.Lock()


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise InputError(f"unknown attention backend {backend!r}; use one of {', '.join(_BACKENDS)}")


def _naive(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """q [B,H,L,D], k/v [B,H,S,D] → [B,H,L,D], computed in float32."""
    w = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)
    return (w @ v.float()).to(q.dtype)


@torch.library.custom_op("trellis2::flash_attention", mutates_args=())
def _flash_attention_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``[B, Lq, H, D]`` attention through ``trellis2_kernels.attention`` (contiguous output)."""
    _kernels.load()  # registers the package trellis2_kernels
    from trellis2_kernels.attention import flash_attention

    return flash_attention(q, k, v, scale=scale).contiguous()


@_flash_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return q.new_empty(q.shape)


def _fa4_runs_on(q: Tensor) -> bool:
    """Whether FlashAttention-4 is used for ``q [B, L, H, D]``: fp16/bf16 on a Hopper or newer NVIDIA GPU (compute
    capability ≥ 9.0; measured faster than cuDNN on an H200 at long sequences; FA4's Ampere path is not measured, so
    SDPA there) with a head size FA4 has (:func:`trellis2_core.capabilities.fa4_runs`)."""
    return q.is_cuda and fa4_runs(device_traits(q.device), q.dtype, q.shape[-1])


@torch.library.custom_op("trellis2::fa4_attention", mutates_args=())
def _fa4_attention_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``[B, Lq, H, D]`` attention through FlashAttention-4 where it runs, else SDPA (contiguous output)."""
    if not _fa4_runs_on(q):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2).contiguous()
    try:
        flash_attn_func = _import_fa4()
    except Exception as err:  # noqa: BLE001 - see fa4_available
        raise BackendError(_FA4_MISSING.format(err=f"{type(err).__name__}: {err}")) from err
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = flash_attn_func(q, k, v, softmax_scale=scale)
    return (out[0] if isinstance(out, tuple) else out).contiguous()


@_fa4_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return q.new_empty(q.shape)


#: backends that are one opaque op on ``[B, L, H, D]`` tensors (custom ops, so ``torch.compile`` keeps them whole)
_BLHD_OPS = {"triton": _flash_attention_op, "fa4": _fa4_attention_op}


def _bhld(q: Tensor, k: Tensor, v: Tensor, scale: float, backend: str) -> Tensor:
    if backend == "naive":
        return _naive(q, k, v, scale)
    if backend in _BLHD_OPS:
        return _BLHD_OPS[backend](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None,
              backend: AttentionBackend = "auto") -> Tensor:
    """Dense attention. ``q [B, L, H, D]``, ``k``/``v`` ``[B, S, H, D]`` → ``[B, L, H, D]``."""
    _check_backend(backend)
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise InputError(f"attention expects q [B,L,H,D] and k, v [B,S,H,D]; got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if backend == "flash_attn":  # explicit only: on Hopper, SDPA (cuDNN) beats FA2 for dense batches
        from flash_attn import flash_attn_func
        return flash_attn_func(q, k, v, softmax_scale=scale)
    if backend in _BLHD_OPS:
        return _BLHD_OPS[backend](q, k, v, scale)
    out = _bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, backend)
    return out.transpose(1, 2)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, q_seqlens: Sequence[int], k_seqlens: Sequence[int], *,
                     scale: float | None = None, backend: AttentionBackend = "auto") -> Tensor:
    """Attention over packed sequences: sequence ``i`` of ``q`` attends only to sequence ``i`` of ``k``/``v``.

    Args:
        q: ``[T, H, D]`` rows of all query sequences, concatenated.
        k, v: ``[S, H, D]`` rows of all key/value sequences, concatenated.
        q_seqlens, k_seqlens: host-side lengths (``sum(q_seqlens) == T``); a zero-length query sequence is allowed.
    """
    _check_backend(backend)
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[1:] != k.shape[1:]:
        raise InputError(f"varlen_attention expects q [T,H,D] and k, v [S,H,D]; got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    if len(q_seqlens) != len(k_seqlens):
        raise InputError(f"{len(q_seqlens)} query sequences but {len(k_seqlens)} key sequences")
    if sum(q_seqlens) != q.shape[0] or sum(k_seqlens) != k.shape[0]:
        raise InputError(f"sequence lengths sum to {sum(q_seqlens)}/{sum(k_seqlens)} rows but q has {q.shape[0]} "
                         f"and k has {k.shape[0]}")
    if any(n == 0 for n in k_seqlens) and any(m > 0 for m, n in zip(q_seqlens, k_seqlens) if n == 0):
        raise InputError("a query sequence has no keys to attend to")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    nseq = len(q_seqlens)
    if nseq == 0 or q.shape[0] == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])

    use_flash = backend == "flash_attn" or (
        backend == "auto" and q.is_cuda and not (len(set(q_seqlens)) == 1 and len(set(k_seqlens)) == 1)
        and flash_attn_runs(device_traits(q.device), q.dtype, q.shape[-1]) and flash_attn_available())
    if use_flash:
        from flash_attn import flash_attn_varlen_func
        dev = q.device
        cu_q = torch.tensor([0, *q_seqlens], device=dev, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        cu_k = torch.tensor([0, *k_seqlens], device=dev, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_seqlens), max(k_seqlens), softmax_scale=scale)

    if len(set(q_seqlens)) == 1 and len(set(k_seqlens)) == 1:
        lq, lk = q_seqlens[0], k_seqlens[0]
        qb = q.view(nseq, lq, *q.shape[1:]).transpose(1, 2)
        kb = k.view(nseq, lk, *k.shape[1:]).transpose(1, 2)
        vb = v.view(nseq, lk, *v.shape[1:]).transpose(1, 2)
        return _bhld(qb, kb, vb, scale, backend).transpose(1, 2).reshape(q.shape[0], q.shape[1], v.shape[2])

    outs = []
    for qi, ki, vi in zip(q.split(list(q_seqlens)), k.split(list(k_seqlens)), v.split(list(k_seqlens))):
        if qi.shape[0] == 0:
            outs.append(qi.new_zeros(0, qi.shape[1], vi.shape[2]))
            continue
        o = _bhld(qi.transpose(0, 1)[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None], scale, backend)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, dim=0)
