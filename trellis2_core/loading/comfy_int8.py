"""Dequantisation of ComfyUI's int8 layers (``int8_tensorwise``, optionally ``convrot``) at load time.

Facts: ``/work/shared/spec/comfy-core-weights.md`` §4. A quantised ``Linear`` ``<layer>`` is stored as
``<layer>.weight`` (int8 ``[out, in]``, the quantisation of the rotated weight), ``<layer>.weight_scale`` (float32,
a scalar or one scale per output row) and its settings, either a ``<layer>.comfy_quant`` uint8 tensor holding UTF-8
JSON or an entry of the header's ``__metadata__["_quantization_metadata"]`` (``{"layers": {<layer>: {...}}}``).

Dequantised weight: ``W = q·s`` per row; with ``convrot``, every consecutive group of ``g`` input columns is then
multiplied by ``H_gᵀ``, ``H_g`` being the normalised regular Hadamard matrix (the Kronecker power of the 4×4 seed
below, divided by √g; symmetric and orthogonal). Computed in float32, one layer at a time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import WeightsError

__all__ = ["QuantSpec", "parse_quant", "quant_specs_from_metadata", "hadamard", "dequantize_int8",
           "QUANT_SUFFIX", "SCALE_SUFFIX", "METADATA_KEY", "SUPPORTED_FORMATS"]

QUANT_SUFFIX = ".comfy_quant"  # <layer>.comfy_quant: uint8 UTF-8 JSON
SCALE_SUFFIX = ".weight_scale"  # <layer>.weight_scale: float32
METADATA_KEY = "_quantization_metadata"  # safetensors __metadata__ entry with the same per-layer dicts
SUPPORTED_FORMATS = ("int8_tensorwise",)
DEFAULT_GROUP_SIZE = 256

# the seed of the regular Hadamard matrix (kitchen int8_utils; spec §4.2)
_SEED = ((1.0, 1.0, 1.0, -1.0), (1.0, 1.0, -1.0, 1.0), (1.0, -1.0, 1.0, 1.0), (-1.0, 1.0, 1.0, 1.0))


@dataclass(frozen=True)
class QuantSpec:
    """One quantised layer's settings: format, whether the weight is rotated, and the rotation group size."""

    format: str
    convrot: bool = False
    group_size: int = DEFAULT_GROUP_SIZE


def _log4(g: int) -> int | None:
    """``k`` with ``4**k == g`` (k ≥ 1), else None."""
    k = 0
    while g > 1 and g % 4 == 0:
        g //= 4
        k += 1
    return k if g == 1 and k >= 1 else None


def parse_quant(layer: str, raw: Any, *, where: str) -> QuantSpec:
    """A layer's ``comfy_quant`` settings (bytes of JSON, or the decoded dict) → :class:`QuantSpec`.

    Raises ``WeightsError`` for malformed JSON, a format other than ``int8_tensorwise`` or a bad group size.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = json.loads(bytes(raw).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise WeightsError(f"{where}: {layer}{QUANT_SUFFIX} is not UTF-8 JSON ({err}); re-download the file") \
                from err
    if not isinstance(raw, Mapping) or not isinstance(raw.get("format"), str):
        raise WeightsError(f"{where}: the quantisation settings of {layer} must be a JSON object with a 'format', "
                           f"got {raw!r}; re-download the file")
    fmt = raw["format"]
    if fmt not in SUPPORTED_FORMATS:
        raise WeightsError(
            f"{where}: layer {layer} uses the quantisation format {fmt!r}, which this loader cannot dequantise (only "
            f"{', '.join(SUPPORTED_FORMATS)}, with or without convrot); use the bf16 file "
            "(trellis_2_bf16.safetensors from Comfy-Org/TRELLIS.2) or trellis_2_int8_convrot.safetensors")
    params = raw.get("params") if isinstance(raw.get("params"), Mapping) else {}
    convrot = raw.get("convrot", params.get("convrot", False))
    group = raw.get("convrot_groupsize", params.get("convrot_groupsize", DEFAULT_GROUP_SIZE))
    if not isinstance(convrot, bool):
        raise WeightsError(f"{where}: layer {layer}: 'convrot' must be true or false, got {convrot!r}")
    if convrot and (not isinstance(group, int) or isinstance(group, bool) or _log4(group) is None):
        raise WeightsError(f"{where}: layer {layer}: convrot_groupsize must be a power of 4 (4, 16, 64, 256, ...), "
                           f"got {group!r}; re-download the file")
    return QuantSpec(fmt, convrot, int(group) if convrot else DEFAULT_GROUP_SIZE)


def quant_specs_from_metadata(metadata: Mapping[str, str] | None, *, where: str) -> dict[str, Any]:
    """Per-layer raw settings from the header's ``_quantization_metadata`` (file layer name → dict), or {}."""
    if not metadata or METADATA_KEY not in metadata:
        return {}
    try:
        data = json.loads(metadata[METADATA_KEY])
    except ValueError as err:
        raise WeightsError(f"{where}: header entry {METADATA_KEY} is not JSON ({err}); re-download the file") from err
    layers = data.get("layers") if isinstance(data, Mapping) else None
    if not isinstance(layers, Mapping):
        raise WeightsError(f"{where}: header entry {METADATA_KEY} has no 'layers' object; re-download the file")
    return dict(layers)


def hadamard(g: int, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """The normalised regular Hadamard matrix ``H_g`` (``g`` a power of 4): Kronecker power of the seed, / √g."""
    k = _log4(g)
    if k is None:
        raise ValueError(f"the Hadamard size must be a power of 4, got {g}")
    seed = torch.tensor(_SEED, dtype=torch.float64)
    h = seed
    for _ in range(k - 1):
        h = torch.kron(h, seed)
    return (h / math.sqrt(g)).to(dtype=dtype, device=device)


def dequantize_int8(q: Tensor, scale: Tensor, spec: QuantSpec, *, layer: str, where: str) -> Tensor:
    """``int8 [out, in]`` + scale (scalar or per row) → the float32 weight ``[out, in]`` (on ``q``'s device)."""
    if q.dtype != torch.int8 or q.dim() != 2:
        raise WeightsError(f"{where}: quantised layer {layer}: weight must be int8 [out, in], found "
                           f"{str(q.dtype).replace('torch.', '')} {list(q.shape)}; re-download the file")
    out_f, in_f = q.shape
    if scale.numel() not in (1, out_f):
        raise WeightsError(f"{where}: quantised layer {layer}: weight_scale has {scale.numel()} values; expected 1 "
                           f"or one per output row ({out_f}); re-download the file")
    s = scale.to(device=q.device, dtype=torch.float32).reshape(-1, 1)
    w = q.to(torch.float32) * s
    if not spec.convrot:
        return w
    g = spec.group_size
    if in_f % g:
        raise WeightsError(f"{where}: quantised layer {layer}: {in_f} input features are not a multiple of the "
                           f"convrot group size {g}; re-download the file")
    h = hadamard(g, device=q.device)
    return (w.reshape(out_f, in_f // g, g) @ h.T).reshape(out_f, in_f)  # W_grp · H_gᵀ per group
