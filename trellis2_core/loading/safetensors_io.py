"""Strict, memory-mapped reading of one ``.safetensors`` checkpoint against a model's expected state dict."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

from ..errors import WeightsError

__all__ = ["read_strict", "check_strict", "KeyFix", "dtype_kind", "dtype_mismatch", "check_dtypes"]

# key -> new key, or None to drop the key (only when the model does not expect it)
KeyFix = Mapping[str, "str | None"]

_MAX_LISTED = 12

# dtype families: a tensor is cast losslessly enough (or exactly as the model's own precision policy intends) only
# within its family. fp8 needs a scale the plain checkpoint format does not carry, so it is no float source.
_FLOATS = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
_INTS = {torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8"}
_ST_KINDS = {**{v: "float" for v in _FLOATS.values()}, **{v: "int" for v in _INTS.values()},
             "U16": "int", "U32": "int", "U64": "int", "BOOL": "bool"}
_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
          "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
          "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64"}


_ACCEPTED = "float weights load from float16/bfloat16/float32/float64, integer buffers from integers"


def dtype_kind(dtype: torch.dtype | str) -> str:
    """'float' (fp16/bf16/fp32/fp64), 'int', 'bool' or 'other' (fp8, complex, ...) of a torch or safetensors dtype."""
    if isinstance(dtype, str):
        return _ST_KINDS.get(dtype, "other")
    if dtype in _FLOATS:
        return "float"
    if dtype in _INTS or dtype in (torch.uint16, torch.uint32, torch.uint64):
        return "int"
    return "bool" if dtype == torch.bool else "other"


def _name(dtype: torch.dtype | str) -> str:
    return _NAMES.get(dtype, dtype) if isinstance(dtype, str) else str(dtype).replace("torch.", "")


def dtype_mismatch(key: str, found: torch.dtype | str, want: torch.dtype) -> str | None:
    """A line for ``key`` when a tensor of dtype ``found`` cannot be loaded into a ``want`` tensor, else None.

    Floating-point parameters take fp16/bf16/fp32/fp64 (cast to the model's precision); integer buffers take
    integers; bool buffers bools. Integers or bools for float weights (a corrupted or mis-converted file) and fp8
    without its scale are refused instead of being silently cast.
    """
    want_kind, found_kind = dtype_kind(want), dtype_kind(found)
    if want_kind == found_kind and found_kind != "other":
        return None
    if want_kind == "other" and _name(found) == _name(want):
        return None
    return f"{key}: expected {_name(want)}, found {_name(found)}"


def check_dtypes(where: str | Path, problems: list[str], fix: str = "re-download it") -> None:
    """WeightsError listing ``problems`` (lines from :func:`dtype_mismatch`) for the file ``where``, if any."""
    if problems:
        raise WeightsError(
            f"{where}: {len(problems)} tensors have a dtype the model cannot take losslessly ("
            f"{_listing(sorted(problems))}; {_ACCEPTED}); the file is corrupted or was converted wrongly (e.g. "
            f"quantised to int/fp8 without scales): {fix}")


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _plan(f, path: Path, expected: Mapping[str, Tensor], fixes: KeyFix, config_name: str | None,
          prefix: str = "", check_dtype: bool = True) -> dict[str, str]:
    """Model key -> file key for the open file ``f``; WeightsError listing missing, unexpected, mis-shaped keys and
    dtypes the model cannot take (from the header only: no tensor is read). With ``prefix`` only the file keys under
    it count (and it is stripped); ``check_dtype`` False leaves dtypes to be checked after a transform."""
    source: dict[str, str] = {}
    unexpected: list[str] = []
    file_keys = [k for k in f.keys() if k.startswith(prefix)]
    if prefix and not file_keys:
        raise WeightsError(f"{path}: no tensors under the prefix '{prefix}'; this file does not hold the model "
                           "looked for there")
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
    shapes, dtypes = [], []
    for new, key in sorted(source.items()):
        piece = f.get_slice(key)
        found = list(piece.get_shape())
        want = list(expected[new].shape)
        if found != want:
            shapes.append(f"{new}: expected {want}, found {found}")
        get_dtype = getattr(piece, "get_dtype", None) if check_dtype else None  # safetensors >= 0.4.2
        bad = dtype_mismatch(new, get_dtype(), expected[new].dtype) if get_dtype is not None else None
        if bad is not None:
            dtypes.append(bad)
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(sorted(unexpected))}")
        if shapes:
            parts.append(f"{len(shapes)} keys with the wrong shape: {_listing(shapes)}")
        if dtypes:
            parts.append(f"{len(dtypes)} keys with the wrong dtype ({_ACCEPTED}): {_listing(dtypes)}")
        if prefix:
            raise WeightsError(f"{path} (tensors under {prefix!r}): checkpoint does not match the model ("
                               + "; ".join(parts) + "); re-download the file")
        config = config_name or "the .json"
        raise WeightsError(
            f"{path}: checkpoint does not match the model built from {config} (" + "; ".join(parts)
            + f"); re-download the checkpoint, or check that {config} beside it belongs to the same file")
    return source


def _open_strict(path: str | Path, expected: Mapping[str, Tensor], fixes: KeyFix | None, read: bool,
                 device: str | torch.device, config_name: str | None, prefix: str = "",
                 transform: Callable[[str, Tensor], Tensor] | None = None,
                 check_header_dtypes: bool = True) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found; re-download it")
    out: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            source = _plan(f, path, expected, fixes or {}, config_name, prefix,
                           check_dtype=transform is None and check_header_dtypes)
            if not read:
                return out
            dtypes = []
            for new, key in source.items():
                tensor = f.get_tensor(key)
                if transform is not None:
                    tensor = transform(new, tensor)
                want = expected[new]
                bad = dtype_mismatch(new, tensor.dtype, want.dtype)
                if bad is not None:
                    dtypes.append(bad)
                    continue
                out[new] = tensor.to(device=device, dtype=want.dtype)
            check_dtypes(path, dtypes, "re-download the checkpoint")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: unreadable, truncated or corrupt safetensors file ({err}); re-download it") \
            from err
    return out


def check_strict(path: str | Path, expected: Mapping[str, Tensor], *, fixes: KeyFix | None = None,
                 config_name: str | None = None, prefix: str = "", check_dtypes: bool = True) -> None:
    """What :func:`read_strict` checks, from the file's header alone (no tensor is read): cheap, for checking a
    whole pipeline before its first model loads. ``check_dtypes`` False skips the dtype check (for files whose
    tensors are transformed at load, e.g. int8 dequantised)."""
    _open_strict(path, expected, fixes, False, "cpu", config_name, prefix, check_header_dtypes=check_dtypes)


def read_strict(path: str | Path, expected: Mapping[str, Tensor], *, fixes: KeyFix | None = None,
                device: str | torch.device = "cpu", config_name: str | None = None, prefix: str = "",
                transform: Callable[[str, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Read ``path`` (memory-mapped) into a state dict matching ``expected`` exactly.

    ``expected`` maps key -> a tensor (meta is fine) whose shape must match and whose dtype each loaded tensor is
    cast to. ``prefix`` (for files holding several models) keeps only the file keys that start with it and strips
    it; no key under it is an error. ``fixes`` renames or drops (prefix-stripped) file keys first. ``transform``
    maps (model key, file tensor) to the tensor to cast (e.g. dequantisation); dtypes are checked after it. Raises ``WeightsError`` naming the file and listing
    missing, unexpected, mis-shaped keys and keys whose dtype cannot be cast losslessly (:func:`dtype_mismatch`),
    or saying the file is truncated/corrupt. ``config_name`` names the model config the expectation came from.
    """
    return _open_strict(path, expected, fixes, True, device, config_name, prefix, transform)
