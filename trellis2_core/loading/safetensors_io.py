"""Strict, memory-mapped reading of one ``.safetensors`` checkpoint against a model's expected state dict."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

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
                device: str | torch.device = "cpu", prefix: str = "",
                transform: Callable[[str, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Read ``path`` (memory-mapped) into a state dict matching ``expected`` exactly.

    ``expected`` maps key -> a tensor (meta is fine) whose shape must match and whose dtype each loaded tensor is
    cast to. ``prefix`` (for files holding several models) keeps only the file keys that start with it and strips
    it; no key under it is an error. ``fixes`` renames or drops (prefix-stripped) file keys first. ``transform``
    maps (model key, file tensor) to the tensor to cast (e.g. dequantisation). Raises ``WeightsError`` naming the
    file and listing missing, unexpected and mis-shaped keys, or saying the file is truncated/corrupt.
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
            file_keys = [k for k in f.keys() if k.startswith(prefix)]
            if prefix and not file_keys:
                raise WeightsError(f"{path}: no tensors under the prefix '{prefix}'; this file does not hold the "
                                   "model looked for there")
            for full_key in file_keys:
                key = full_key[len(prefix):]
                new = fixes.get(key, key)
                if new is None:
                    if key in expected:  # the model does keep it: load it as it is
                        source[key] = full_key
                    continue  # dropped: derived data the model recomputes at run time
                if new in expected:
                    source[new] = full_key
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
                if prefix:
                    raise WeightsError(f"{path} (tensors under {prefix!r}): checkpoint does not match the model ("
                                       + "; ".join(parts) + "); re-download the file")
                raise WeightsError(
                    f"{path}: checkpoint does not match the model built from its .json ("
                    + "; ".join(parts) + "); re-download the checkpoint, or check that the .json beside it belongs "
                    "to the same file"
                )
            for new, key in source.items():
                tensor = f.get_tensor(key)
                if transform is not None:
                    tensor = transform(new, tensor)
                want = expected[new]
                out[new] = tensor.to(device=device, dtype=want.dtype if want.is_floating_point() else tensor.dtype)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: unreadable, truncated or corrupt safetensors file ({err}); re-download it") \
            from err
    return out
