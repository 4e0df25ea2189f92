"""Flash-attention forward in Triton (non-causal, one pass over the keys with an online softmax).

Each program owns ``BLOCK_M`` query rows of one (batch, head): it keeps the running row maximum ``m``, the running
denominator ``l`` and the unnormalised output ``acc`` in registers (fp32) while it walks the keys in ``BLOCK_N``
tiles; the scale is folded into a base-2 exponent (``exp2(s·scale·log2 e − m)``). Full key tiles run without masks;
a ragged last tile is masked. Inputs keep their ``[B, L, H, D]`` layout (any strides with a contiguous head dim),
the output is written contiguous ``[B, Lq, H, D]``. Programs are ordered query-tile-fastest so that the programs of
one (batch, head), which read the same keys, run together and share them through L2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionConfig:
    """Tile sizes and launch parameters of :func:`attention_triton`."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False  # tensor-descriptor loads (Hopper and newer; needs 16-byte aligned strides)


@triton.jit
def _update(acc, m_i, l_i, q, k, v, n_idx, LK, qk_scale, MASKED: tl.constexpr):
    """Fold one key tile ``k``/``v`` ``[BLOCK_N, D]`` into the running (acc, max, denominator) of ``q``'s rows."""
    s = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] fp32
    if MASKED:
        s = tl.where((n_idx < LK)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _start(H, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """This program's query tile, batch element and head, and the empty running state (acc, max, denominator)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    return pid_m, bh // H, bh % H, acc, m_i, l_i


@triton.jit
def _finish(O, acc, l_i, b, h, offs_m, offs_d, LQ, so_b, so_l, so_h):
    """Normalise by the softmax denominator and store the tile's rows (those below ``LQ``)."""
    acc = acc / l_i[:, None]
    o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m < LQ)[:, None])


@triton.jit
def _attention_fwd(Q, K, V, O, sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, so_b, so_l, so_h,
                   H, LQ, LK, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, b, h, acc, m_i, l_i = _start(H, BLOCK_M, HEAD_DIM)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :], mask=(offs_m < LQ)[:, None],
                other=0.0)
    k_ptrs = K + b * sk_b + h * sk_h + offs_n[:, None] * sk_l + offs_d[None, :]
    v_ptrs = V + b * sv_b + h * sv_h + offs_n[:, None] * sv_l + offs_d[None, :]
    full = (LK // BLOCK_N) * BLOCK_N
    for start in range(0, full, BLOCK_N):
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, start + offs_n, LK, qk_scale, MASKED=False)
        k_ptrs += BLOCK_N * sk_l
        v_ptrs += BLOCK_N * sv_l
    if full < LK:
        valid = (full + offs_n) < LK
        k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, full + offs_n, LK, qk_scale, MASKED=True)
    _finish(O, acc, l_i, b, h, offs_m, offs_d, LQ, so_b, so_l, so_h)


@triton.jit
def _attention_fwd_tma(q_desc, k_desc, v_desc, O, so_b, so_l, so_h, H, LQ, LK, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The same kernel with tensor-memory-accelerator loads (Hopper): 4-D descriptors over ``[B, L, H, D]``,
    out-of-range rows read as zeros."""
    pid_m, b, h, acc, m_i, l_i = _start(H, BLOCK_M, HEAD_DIM)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = q_desc.load([b, pid_m * BLOCK_M, h, 0]).reshape(BLOCK_M, HEAD_DIM)
    full = (LK // BLOCK_N) * BLOCK_N
    for start in range(0, full, BLOCK_N):
        k = k_desc.load([b, start, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = v_desc.load([b, start, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, start + offs_n, LK, qk_scale, MASKED=False)
    if full < LK:
        k = k_desc.load([b, full, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        v = v_desc.load([b, full, h, 0]).reshape(BLOCK_N, HEAD_DIM)
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, full + offs_n, LK, qk_scale, MASKED=True)
    _finish(O, acc, l_i, b, h, offs_m, offs_d, LQ, so_b, so_l, so_h)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     config: AttentionConfig | None = None) -> torch.Tensor:
    """Launch the kernel on validated ``q [B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, H, D]`` (head dim contiguous)."""
    cfg = config or AttentionConfig()
    b, lq, h, d = q.shape
    lk = k.shape[1]
    out = torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(lq, cfg.block_m), b * h)
    if cfg.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        def desc(t, rows):
            return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, rows, 1, d])
        _attention_fwd_tma[grid](desc(q, cfg.block_m), desc(k, cfg.block_n), desc(v, cfg.block_n), out,
                                 out.stride(0), out.stride(1), out.stride(2), h, lq, lk, float(scale) * LOG2E,
                                 HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                 num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return out
    _attention_fwd[grid](q, k, v, out, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                         v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                         h, lq, lk, float(scale) * LOG2E,
                         HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


__all__ = ["AttentionConfig", "attention_triton", "LOG2E"]
