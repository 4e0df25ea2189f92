"""Triton masked implicit-GEMM submanifold conv, plus an im2col + cuBLAS path for a few huge-channel shapes.

Algorithm (facts from spec performance.md §2.1; this code is our own):

* Plan (once per neighbour map): every voxel's 27-bit neighbour mask is read as a Gray code and decoded; rows are
  stably sorted by the decoded value, so a tile of consecutive sorted rows shares few distinct masks while rows with
  the same mask keep their original (usually spatial) order. The plan stores the sorted neighbour map transposed
  (``[27, Npad]``, so a tile's indices for one offset are one contiguous load) and, per tile size, each tile's list
  of offsets that are present for at least one of its rows.
* Kernel: a program owns BLOCK_N sorted rows x BLOCK_CO output channels and runs one flat loop over
  (listed offset, Ci chunk): gather ``[BLOCK_N, BLOCK_K]`` rows of ``feats`` through the map (masked where absent),
  load the ``[BLOCK_K, BLOCK_CO]`` weight slice straight from the official ``[Co, 27, Ci]`` layout (Ci contiguous,
  so no transposed copy is needed), ``tl.dot`` into an fp32 accumulator; bias in the epilogue; rows are written
  back through the sort permutation. Split-K cuts the flat loop into SPLIT_K parts writing fp32 partials that are
  summed afterwards; it is kept for other GPUs, but on the H100 it never won (see configs.py).
* im2col + cuBLAS (``_explicit``): the shipped table picks it for the coarsest, widest convs (Ci = 1024, and
  512 -> 2048), where a dense GEMM over all 27 offsets beats the masked kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import ConvConfig, select_config

PAD = 256  # rows of the sorted map are padded to a multiple of the largest BLOCK_N
_EXPLICIT_TEMP_BYTES = 512 << 20  # bound on the im2col block per row chunk


@triton.jit
def _accumulate(acc, it, kch, pid_t, rows, kk, col_ok, feats_ptr, w_base, toff_ptr, nbrt_ptr, n_pad, ci,
                EVEN_K: tl.constexpr, EVEN_CO: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_K: tl.constexpr):
    # One step of the flat K loop: listed offset number it // kch, input-channel chunk it % kch.
    t = it // kch
    k = (it - t * kch) * BLOCK_K + kk
    v = tl.load(toff_ptr + pid_t * 27 + t)
    idx = tl.load(nbrt_ptr + v.to(tl.int64) * n_pad + rows)
    a_mask = (idx >= 0)[:, None]
    b_ptrs = w_base + (v * ci + k)[:, None]
    if EVEN_K:
        if EVEN_CO:
            b = tl.load(b_ptrs)
        else:
            b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
    else:
        a_mask = a_mask & (k < ci)[None, :]
        b = tl.load(b_ptrs, mask=(k < ci)[:, None] & col_ok[None, :], other=0.0)
    a = tl.load(feats_ptr + idx[:, None].to(tl.int64) * ci + k[None, :], mask=a_mask, other=0.0)
    if UPCAST:  # Triton's CPU interpreter mis-evaluates bf16 dots: exact fp32 products of the bf16 values
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _submconv_kernel(feats_ptr, w_ptr, bias_ptr, out_ptr, nbrt_ptr, perm_ptr, toff_ptr, tcnt_ptr,
                     n_tiles, n_cob, group, n_pad, ci, co, split_stride,
                     HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, EVEN_CO: tl.constexpr,
                     IEEE: tl.constexpr, UPCAST: tl.constexpr, INTERPRET: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr):
    # Launch order: groups of `group` tiles x all output-channel blocks (group = n_tiles: tiles fastest, so the
    # CTAs in flight share weight slices; group = 1: channel blocks fastest, so they share gathered rows).
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    per_group = group * n_cob
    first = (pid // per_group) * group
    size = tl.minimum(n_tiles - first, group)
    pid_t = first + (pid % per_group) % size
    pid_c = (pid % per_group) // size
    rows = pid_t * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    kk = tl.arange(0, BLOCK_K)
    col_ok = cols < co
    kch = tl.cdiv(ci, BLOCK_K)
    total = tl.load(tcnt_ptr + pid_t) * kch
    if SPLIT_K > 1:
        per = tl.cdiv(total, SPLIT_K)
        start = pid_s * per
        end = tl.minimum(start + per, total)
    else:
        start = 0
        end = total
    w_base = w_ptr + cols[None, :].to(tl.int64) * (27 * ci)
    acc = tl.zeros([BLOCK_N, BLOCK_CO], dtype=tl.float32)
    if INTERPRET:
        # Triton 3.6's interpreter cannot take a run-time `range` bound under NumPy >= 2.5; a while loop is
        # equivalent there. Compiled kernels keep the `for` loop, which Triton software-pipelines.
        it = start
        while it < end:
            acc = _accumulate(acc, it, kch, pid_t, rows, kk, col_ok, feats_ptr, w_base, toff_ptr, nbrt_ptr, n_pad,
                              ci, EVEN_K, EVEN_CO, IEEE, UPCAST, BLOCK_K)
            it += 1
    else:
        for it in range(start, end):
            acc = _accumulate(acc, it, kch, pid_t, rows, kk, col_ok, feats_ptr, w_base, toff_ptr, nbrt_ptr, n_pad,
                              ci, EVEN_K, EVEN_CO, IEEE, UPCAST, BLOCK_K)
    dst = tl.load(perm_ptr + rows)
    o_mask = (dst >= 0)[:, None] & col_ok[None, :]
    o_off = dst[:, None].to(tl.int64) * co + cols[None, :]
    if SPLIT_K > 1:
        tl.store(out_ptr + pid_s.to(tl.int64) * split_stride + o_off, acc, mask=o_mask)
    else:
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def _gray_decode(g: torch.Tensor) -> torch.Tensor:
    b = g.clone()
    shift = 1
    while shift < 32:
        b ^= b >> shift
        shift *= 2
    return b


def sorted_map(plan, sort: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm [Npad] int32, nbrt [27, Npad] int32)`` of ``plan``: rows in Gray-decoded mask order, -1 padded."""
    key = ("sorted", sort)
    hit = plan._cache.get(key)
    if hit is not None:
        return hit
    nbr = plan.nbr
    n = nbr.shape[0]
    n_pad = max(PAD, triton.cdiv(n, PAD) * PAD)
    dev = nbr.device
    if sort:
        bits = torch.arange(27, device=dev, dtype=torch.int32)
        mask = ((nbr >= 0).to(torch.int32) << bits).sum(dim=1, dtype=torch.int32)  # distinct bits: sum == OR
        order = torch.sort(_gray_decode(mask), stable=True).indices
        ordered = nbr.index_select(0, order)
    else:
        order = torch.arange(n, device=dev)
        ordered = nbr
    perm = torch.full((n_pad,), -1, dtype=torch.int32, device=dev)
    perm[:n] = order.to(torch.int32)
    nbrt = torch.full((27, n_pad), -1, dtype=torch.int32, device=dev)
    nbrt[:, :n] = ordered.t()
    plan._cache[key] = (perm, nbrt)
    return perm, nbrt


def tile_offsets(plan, block_n: int, sort: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile of ``block_n`` sorted rows: ``(offsets [T, 27] int32, count [T] int32)``, present offsets first."""
    key = ("tiles", block_n, sort)
    hit = plan._cache.get(key)
    if hit is not None:
        return hit
    _, nbrt = sorted_map(plan, sort)
    n_pad = nbrt.shape[1]
    present = (nbrt >= 0).view(27, n_pad // block_n, block_n).any(dim=2).t()  # [T, 27]
    count = present.sum(dim=1).to(torch.int32)
    offsets = torch.argsort((~present).to(torch.int8), dim=1, stable=True).to(torch.int32).contiguous()
    plan._cache[key] = (offsets, count)
    return offsets, count


def _implicit(feats, plan, weight, bias, cfg: ConvConfig, sort: bool = True) -> torch.Tensor:
    n, ci = feats.shape
    co = weight.shape[0]
    perm, nbrt = sorted_map(plan, sort)
    offsets, count = tile_offsets(plan, cfg.block_n, sort)
    n_pad = nbrt.shape[1]
    n_tiles, n_cob = n_pad // cfg.block_n, triton.cdiv(co, cfg.block_co)
    group = n_tiles if cfg.group <= 0 else min(cfg.group, n_tiles)
    grid = (n_tiles * n_cob, cfg.split_k)
    split = cfg.split_k > 1
    if split:
        out = torch.empty((cfg.split_k, n, co), dtype=torch.float32, device=feats.device)
    else:
        out = torch.empty((n, co), dtype=feats.dtype, device=feats.device)
    _submconv_kernel[grid](
        feats, weight, bias if bias is not None else feats, out, nbrt, perm, offsets, count,
        n_tiles, n_cob, group, n_pad, ci, co, n * co,
        HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k, EVEN_K=ci % cfg.block_k == 0,
        EVEN_CO=co % cfg.block_co == 0, IEEE=feats.dtype == torch.float32,
        UPCAST=feats.device.type == "cpu" and feats.dtype == torch.bfloat16, INTERPRET=feats.device.type == "cpu",
        BLOCK_N=cfg.block_n, BLOCK_CO=cfg.block_co, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not split:
        return out
    acc = out.sum(dim=0)
    if bias is not None:
        acc += bias.to(torch.float32)
    return acc.to(feats.dtype)


def _explicit(feats, plan, weight, bias) -> torch.Tensor:
    """im2col + one device GEMM per row chunk (wins for huge Ci x Co at small N, where the GEMM is dense anyway)."""
    n, ci = feats.shape
    co = weight.shape[0]
    src = torch.cat([feats, feats.new_zeros((1, ci))], dim=0)
    w = weight.view(co, 27 * ci).t()
    out = torch.empty((n, co), dtype=feats.dtype, device=feats.device)
    rows = max(1, _EXPLICIT_TEMP_BYTES // (27 * ci * feats.element_size()))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        idx = plan.nbr[s:e].to(torch.int64)
        idx = torch.where(idx < 0, n, idx)
        cols = src.index_select(0, idx.view(-1)).view(e - s, 27 * ci)
        if bias is not None:
            torch.addmm(bias.to(feats.dtype), cols, w, out=out[s:e])
        else:
            torch.mm(cols, w, out=out[s:e])
    return out


def submconv_triton(feats: torch.Tensor, plan, weight: torch.Tensor, bias: torch.Tensor | None,
                    config: ConvConfig | None = None) -> torch.Tensor:
    """Submanifold conv on the Triton path; inputs already validated, ``plan`` a SubmconvPlan."""
    n, ci = feats.shape
    co = weight.shape[0]
    if n == 0:
        return torch.empty((0, co), dtype=feats.dtype, device=feats.device)
    feats = feats.contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    cfg = config or select_config(n, ci, co, feats.dtype, feats.device)
    if cfg.method == "explicit" and feats.device.type == "cuda" and feats.dtype != torch.float32:
        return _explicit(feats, plan, weight, bias)
    return _implicit(feats, plan, weight, bias, cfg)
