"""3-D rotary position embedding (RoPE) of the flow DiTs, for dense grids and sparse voxels (spec §4.3).

Each of the three axes gets ``freq_dim = head_dim // 2 // 3`` frequencies ``f_j = rope_freq[0] / rope_freq[1] **
(j / freq_dim)``. A token at integer latent position ``(x, y, z)`` has the phases ``[x·f, y·f, z·f]`` (axis-major),
padded with zero phases up to ``head_dim // 2``. The head vector is read as ``head_dim // 2`` complex numbers made
of *adjacent* pairs ``(d0, d1), (d2, d3), …`` and each is multiplied by ``exp(i·phase)``.

The official code does this with complex64 tensors; here the same product is written with real ``cos``/``sin``
arithmetic in float32 (``(a + ib)(c + is) = (ac − bs) + i(as + bc)``), which needs no complex dtype and gives the
same values (tests compare it with a complex-number formulation).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .tensor import DerivedCache, SparseTensor

__all__ = ["DEFAULT_ROPE_FREQ", "RopeTable", "rope_frequencies", "rope_cos_sin", "grid_positions", "grid_rope",
           "sparse_rope", "apply_rope"]

DEFAULT_ROPE_FREQ: tuple[float, float] = (1.0, 10000.0)

RopeTable = tuple[Tensor, Tensor]
"""``(cos, sin)``, each ``[N, head_dim // 2]`` float32: the rotation of every token (one row per token)."""


def _freq_key(rope_freq: Sequence[float]) -> tuple[float, float]:
    if len(rope_freq) != 2:
        raise InputError(f"rope_freq must be (scale, base), got {tuple(rope_freq)}")
    return (float(rope_freq[0]), float(rope_freq[1]))


def rope_frequencies(head_dim: int, rope_freq: Sequence[float] = DEFAULT_ROPE_FREQ,
                     device: torch.device | str | None = None) -> Tensor:
    """The per-axis frequencies ``[head_dim // 2 // 3]`` float32 (§4.3: 21 for head_dim 128)."""
    freq_dim = head_dim // 2 // 3
    if freq_dim < 1:
        raise InputError(f"3-D RoPE needs head_dim >= 6, got {head_dim}")
    scale, base = _freq_key(rope_freq)
    exponent = torch.arange(freq_dim, dtype=torch.float32, device=device) / freq_dim
    return scale / (base ** exponent)


def rope_cos_sin(positions: Tensor, head_dim: int, rope_freq: Sequence[float] = DEFAULT_ROPE_FREQ) -> RopeTable:
    """Rotation table of tokens at integer positions.

    Args:
        positions: ``[N, 3]`` integer (x, y, z) latent-grid coordinates (raw, not normalised).
        head_dim: attention head dimension ``D``.
    Returns:
        ``(cos, sin)``, each ``[N, D // 2]`` float32; the padding columns are ``(1, 0)`` (no rotation).
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise InputError(f"RoPE positions must be [N, 3] (x, y, z), got {list(positions.shape)}")
    freqs = rope_frequencies(head_dim, rope_freq, positions.device)  # [F]
    phases = (positions.to(torch.float32)[:, :, None] * freqs).reshape(positions.shape[0], -1)  # [N, 3F]
    cos, sin = torch.cos(phases), torch.sin(phases)
    pad = head_dim // 2 - phases.shape[1]
    if pad > 0:  # §4.3: the last complex pairs keep phase 0
        cos = torch.cat([cos, cos.new_ones(cos.shape[0], pad)], dim=1)
        sin = torch.cat([sin, sin.new_zeros(sin.shape[0], pad)], dim=1)
    return cos, sin


def grid_positions(shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``[X·Y·Z, 3]`` int64 positions of a dense grid, flattened with z fastest (``meshgrid(indexing='ij')``)."""
    if len(shape) != 3:
        raise InputError(f"grid shape must be (X, Y, Z), got {tuple(shape)}")
    axes = [torch.arange(int(n), device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def grid_rope(shape: Sequence[int], head_dim: int, rope_freq: Sequence[float] = DEFAULT_ROPE_FREQ, *,
              device: torch.device | str | None = None, cache: DerivedCache | None = None) -> RopeTable:
    """Rotation table ``[X·Y·Z, D // 2]`` of every cell of a dense grid (token order as :func:`grid_positions`).

    With ``cache`` (owned by the caller, e.g. a model) the table is computed once per shape/head_dim/device.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = ("grid_rope", tuple(int(n) for n in shape), int(head_dim), _freq_key(rope_freq), str(dev))

    def make() -> RopeTable:
        return rope_cos_sin(grid_positions(shape, device), head_dim, rope_freq)

    return cache.get_or_create(key, make) if cache is not None else make()


def sparse_rope(x: SparseTensor, head_dim: int, rope_freq: Sequence[float] = DEFAULT_ROPE_FREQ) -> RopeTable:
    """Rotation table ``[N, D // 2]`` of the voxels of ``x`` (positions ``coords[:, 1:]``), cached on its voxel set."""
    key = ("rope", int(head_dim), _freq_key(rope_freq), str(x.coords.device))
    return x.cache.get_or_create(key, lambda: rope_cos_sin(x.coords[:, 1:], head_dim, rope_freq))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs of ``x [..., N, H, D]`` by the table ``cos``/``sin`` ``[N, D // 2]``.

    Computed in float32 and returned in ``x.dtype`` (§4.6). ``N`` is the token axis (third from the end); the
    table broadcasts over heads and over any leading batch axes.
    """
    if x.shape[-1] != 2 * cos.shape[-1] or x.shape[-3] != cos.shape[0]:
        raise InputError(f"RoPE table {list(cos.shape)} does not fit a [..., N, H, D] input {list(x.shape)}")
    pairs = x.to(torch.float32).unflatten(-1, (-1, 2))  # [..., N, H, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]  # [N, 1, D/2]
    out = torch.stack([a * c - b * s, a * s + b * c], dim=-1)
    return out.flatten(-2).to(x.dtype)
