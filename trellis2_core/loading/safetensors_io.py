"""Strict, memory-mapped reading of one ``.safetensors`` checkpoint against a model's expected state dict."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..errors import WeightsError

__all__ = ["read_strict", "KeyFix"]

# key -> new key, or None to drop the key (only when the model does not expect it)
KeyFix = Mapping[str, "str | None"]

_MAX_LISTED = 12


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def read_strict(path: str | Path, expected: Mapping[str, Tensor], *, fixes: KeyFix | None = None,
                device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read ``path`` (memory-mapped) into a state dict matching ``expected`` exactly.

    ``expected`` maps key -> a tensor (meta is fine) whose shape must match and whose dtype each loaded tensor is
    cast to. ``fixes`` renames or drops file keys first. Raises ``WeightsError`` naming the file and listing
    missing, unexpected and mis-shaped keys, or saying the file is truncated/corrupt.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fixes = fixes or {}
    if not path.is_file():
        raise WeightsError(f"{path}: file not found; re-download it")
    out: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            source: dict[str, str] = {}  # model key -> file key
            unexpected: list[str] = []
            for key in f.keys():
                new = fixes.get(key, key)
                if new is None:
                    if key in expected:  # the model does keep it: load it as it is
                        source[key] = key
                    continue  # dropped: derived data the model recomputes at run time
                if new in expected:
                    source[new] = key
                else:
                    unexpected.append(key)
            missing = sorted(set(expected) - set(source))
            shapes = []
            for new, key in sorted(source.items()):
                found = list(f.get_slice(key).get_shape())
                want = list(expected[new].shape)
                if found != want:
                    shapes.append(f"{new}: expected {want}, found {found}")
            if missing or unexpected or shapes:
                parts = []
                if missing:
                    parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
                if unexpected:
                    parts.append(f"{len(unexpected)} unexpected keys: {_listing(sorted(unexpected))}")
                if shapes:
                    parts.append(f"{len(shapes)} keys with the wrong shape: {_listing(shapes)}")
                raise WeightsError(
                    f"{path}: checkpoint does not match the model built from its .json ("
                    + "; ".join(parts) + "); re-download the checkpoint, or check that the .json beside it belongs "
                    "to the same file"
                )
            for new, key in source.items():
                tensor = f.get_tensor(key)
                want = expected[new]
                out[new] = tensor.to(device=device, dtype=want.dtype if want.is_floating_point() else tensor.dtype)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: unreadable, truncated or corrupt safetensors file ({err}); re-download it") \
            from err
    return out
