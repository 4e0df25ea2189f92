"""Shipped launch configurations for the submanifold conv (no runtime autotuning: a table lookup + a heuristic).

The table is keyed by ``(capability major, log2 N bucket, Ci, Co)`` and was produced on an H100 by
``benchmarks/tune_submconv.py`` (fp16; bf16 uses the same entries). Shapes not in the table get the entry of the
nearest N bucket with the same channels, or else the heuristic of ``_heuristic``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvConfig:
    """One way to run a conv: ``method`` "implicit" (the Triton masked implicit GEMM) or "explicit" (im2col + mm)."""

    method: str = "implicit"
    block_n: int = 128
    block_co: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 4
    split_k: int = 1
    group: int = 0  # launch order: tiles per group (0 = all tiles, i.e. tiles fastest)


def _c(bn: int, bco: int, bk: int, w: int, s: int, sk: int = 1, group: int = 0) -> ConvConfig:
    return ConvConfig("implicit", bn, bco, bk, w, s, sk, group)


_EXPLICIT = ConvConfig("explicit")

# (capability major, round(log2 N), Ci, Co) -> config, from the H100 tuning run of benchmarks/tune_submconv.py on
# the 1024-decoder shell hierarchy (fp16; times are that run's medians, see benchmarks/RESULTS.md).
_TABLE: dict[tuple[int, int, int, int], ConvConfig] = {
    (9, 13, 1024, 1024): _EXPLICIT,  # 1.052 ms, 322 TF/s (best implicit 1.23 ms)
    (9, 13, 1024, 4096): _EXPLICIT,  # 3.659 ms, 370 TF/s (best implicit 4.60 ms)
    (9, 15, 512, 512): _c(128, 128, 64, 4, 3, 1, 8),  # 1.031 ms, 327 TF/s
    (9, 15, 512, 2048): _EXPLICIT,  # 3.991 ms, 338 TF/s (best implicit 4.07 ms)
    (9, 17, 256, 256): _c(64, 256, 64, 4, 4, 1, 0),  # 0.950 ms, 354 TF/s
    (9, 17, 256, 1024): _c(128, 128, 64, 4, 3, 1, 8),  # 3.463 ms, 389 TF/s
    (9, 19, 128, 128): _c(128, 128, 64, 4, 3, 1, 0),  # 0.918 ms, 350 TF/s
    (9, 19, 128, 512): _c(128, 128, 64, 4, 3, 1, 1),  # 3.452 ms, 372 TF/s
    (9, 21, 64, 64): _c(128, 64, 64, 4, 5, 1, 0),  # 1.213 ms, 241 TF/s
}

_INTERPRETER = ConvConfig("implicit", 32, 32, 16, 4, 1, 1, 0)


def n_bucket(n: int) -> int:
    """The table's N bucket: ``round(log2 N)``."""
    return int(round(math.log2(max(n, 1))))


def _pow2_at_least(x: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, 1 << (max(x, 1) - 1).bit_length()))


def _heuristic(n: int, ci: int, co: int, dtype: torch.dtype, sm_count: int) -> ConvConfig:
    """Rules distilled from the H100 sweep, for shapes the table does not hold."""
    if dtype == torch.float32:  # exact fp32 dots (no tf32) run on the FMA units: small tiles
        return ConvConfig("implicit", 64, 64, 32, 4, 3, 1)
    if ci >= 1024 or (ci >= 512 and co >= 2048):
        return _EXPLICIT  # dense cuBLAS beats the masked kernel despite computing all 27 offsets
    bk = _pow2_at_least(ci, 16, 64)
    bco = _pow2_at_least(co, 16, 128)
    # Split-K never won on the H100 sweep (even at N = 700 its fp32 partial round trip cost more than the idle
    # SMs); small sets get smaller row tiles instead.
    bn = 128 if math.ceil(n / 128) * math.ceil(co / bco) >= sm_count else 64
    return ConvConfig("implicit", bn, bco, bk, 4, 3, 1, 8 if co > bco else 0)


def select_config(n: int, ci: int, co: int, dtype: torch.dtype, device: torch.device) -> ConvConfig:
    """The configuration to run an ``N x Ci -> Co`` conv in ``dtype`` on ``device``."""
    if device.type != "cuda":  # Triton interpreter (tests): tiny tiles
        return _INTERPRETER
    major, _ = torch.cuda.get_device_capability(device)
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    if dtype != torch.float32:
        bucket = n_bucket(n)
        for d in (0, -1, 1, -2, 2):
            cfg = _TABLE.get((major, bucket + d, ci, co))
            if cfg is not None:
                return cfg
    return _heuristic(n, ci, co, dtype, sm_count)
