"""Exact vertex data in a written GLB: the input's positions and UVs, bit for bit as a reader gets them back.

trimesh writes ``TEXCOORD_0 = 1 − v`` and reads ``v = 1 − TEXCOORD_0`` in float32, so a plain round trip can move
a UV by one float32 step. :func:`texcoords_for` picks, per value, a float32 file value ``w`` with
``float32(1 − w) == v`` (the value a trimesh reader recovers), and :func:`patch_accessor` writes those floats into
the accessor of the encoded GLB (same length, so the rest of the file is untouched).
"""
from __future__ import annotations

import json
import struct

import numpy as np

from ..errors import InputError

__all__ = ["texcoords_for", "patch_accessor", "read_accessor"]

_JSON, _BIN = 0x4E4F534A, 0x004E4942


def texcoords_for(uvs: np.ndarray) -> np.ndarray:
    """glTF ``TEXCOORD_0`` float32 ``[V, 2]`` that a reader flipping ``v ← 1 − v`` in float32 maps back to ``uvs``
    (cast to float32) exactly; where no float32 does (|v| below ~6e-8 next to 1), the nearest one."""
    uv = np.asarray(uvs, dtype=np.float32)
    v = uv[:, 1]
    one = np.float32(1.0)
    best = (one - v.astype(np.float64)).astype(np.float32)
    out = best.copy()
    done = (one - best) == v
    for direction in (np.inf, -np.inf):
        cand = best
        for _ in range(4):
            cand = np.nextafter(cand, np.float32(direction))
            hit = ~done & ((one - cand) == v)
            out[hit] = cand[hit]
            done |= hit
    return np.stack((uv[:, 0], out), axis=1)


def _chunks(glb: bytes) -> tuple[dict, int, int]:
    """(json, offset of the BIN chunk data, its length)."""
    magic, _version, _length = struct.unpack_from("<III", glb, 0)
    if magic != 0x46546C67:
        raise InputError("not a GLB file (bad magic)")
    jlen, jtype = struct.unpack_from("<II", glb, 12)
    if jtype != _JSON:
        raise InputError("GLB: the first chunk is not JSON")
    doc = json.loads(glb[20:20 + jlen].decode("utf-8"))
    boff = 20 + jlen
    blen, btype = struct.unpack_from("<II", glb, boff)
    if btype != _BIN:
        raise InputError("GLB: the second chunk is not BIN")
    return doc, boff + 8, blen


def _accessor_span(doc: dict, attribute: str, count: int, width: int) -> tuple[int, int]:
    prims = [p for m in doc.get("meshes", []) for p in m.get("primitives", [])]
    if len(prims) != 1 or attribute not in prims[0].get("attributes", {}):
        raise InputError(f"GLB: expected one primitive with {attribute}")
    acc = doc["accessors"][prims[0]["attributes"][attribute]]
    view = doc["bufferViews"][acc["bufferView"]]
    if acc.get("componentType") != 5126 or acc.get("count") != count or view.get("byteStride", 4 * width) != 4 * width:
        raise InputError(f"GLB: {attribute} is not a tightly packed float32 [{count}, {width}] accessor")
    return view.get("byteOffset", 0) + acc.get("byteOffset", 0), 4 * width * count


def patch_accessor(glb: bytes, attribute: str, values: np.ndarray) -> bytes:
    """``glb`` with the float32 data of ``attribute`` (e.g. ``TEXCOORD_0``) replaced by ``values [N, W]``."""
    values = np.ascontiguousarray(values, dtype="<f4")
    doc, data, _ = _chunks(glb)
    start, size = _accessor_span(doc, attribute, values.shape[0], values.shape[1])
    out = bytearray(glb)
    out[data + start:data + start + size] = values.tobytes()
    return bytes(out)


def read_accessor(glb: bytes, attribute: str, count: int, width: int) -> np.ndarray:
    """The float32 data ``[count, width]`` of ``attribute`` of the single primitive of ``glb``."""
    doc, data, _ = _chunks(glb)
    start, size = _accessor_span(doc, attribute, count, width)
    return np.frombuffer(glb[data + start:data + start + size], dtype="<f4").reshape(count, width).copy()
