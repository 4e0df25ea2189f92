"""glTF 2.0 binary (GLB) packing of a baked PBR mesh, written with trimesh (§9.6).

* One mesh, one primitive: POSITION, NORMAL (unit), TEXCOORD_0 (float32), uint32 indices.
* Material: ``baseColorTexture`` = RGBA ``[base_color, alpha]``, ``metallicRoughnessTexture`` = RGB
  ``[0, roughness, metallic]`` (glTF: G = roughness, B = metallic), every factor 1; ``alphaMode`` OPAQUE (official),
  MASK (with ``alphaCutoff``) or BLEND; ``doubleSided`` as asked.
* Axes: the model frame is Z-up, glTF is Y-up: positions and normals go through ``(x, y, z) → (x, z, −y)``.
* UVs: texture row 0 is ``v ≈ 0`` (our raster convention, §9.5) and is written as the image's first (top) row;
  glTF's ``(0, 0)`` is the top-left of the image, so TEXCOORD_0 must be the raster ``(u, v)`` unchanged. trimesh's
  glTF exporter writes ``1 − v``, so we hand it ``1 − v`` and the two flips cancel (§13 item 28).
* Textures: PNG (lossless, readable everywhere) or WebP (Pillow lossy, quality 80 — the official choice; it is
  referenced through ``EXT_texture_webp``, which trimesh marks *required*, so viewers without that extension
  cannot open the file; §13 item 30).
* The path is checked before any work and the file is written atomically (:mod:`.output_file`: ``.glb`` names
  only, no special files, missing folders created, temporary file + rename), so an interrupted, cancelled or failed
  export never leaves a half-written GLB behind. Texture encoding and the write poll for cancellation.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..cancel import checkpoint
from ..errors import BackendError, InputError
from ..mesh.types import z_up_to_y_up
from .output_file import check_output_path, write_atomically

__all__ = ["write_glb", "ALPHA_MODES", "TEXTURE_FORMATS", "check_output_path"]

ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")
TEXTURE_FORMATS = ("png", "webp")


def _encode(array: Tensor, texture_format: str, png_compress_level: int):
    """A PIL image of ``array`` ([H, W, 4] → RGBA, [H, W, 3] → RGB, uint8) carrying its own encoded bytes."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array.detach().cpu().numpy()))
    buffer = io.BytesIO()
    if texture_format == "webp":
        img.save(buffer, format="WEBP", quality=80, method=4, alpha_quality=100)  # Pillow's defaults, as official
    else:
        img.save(buffer, format="PNG", compress_level=int(png_compress_level))
    return _with_payload(img, buffer.getvalue(), texture_format.upper())


def _with_payload(img, payload: bytes, fmt: str):
    """Make ``img.save(f, format=fmt)`` write ``payload`` instead of encoding again.

    trimesh encodes each texture itself, one after the other, with Pillow's default options; we encode both
    textures beforehand, in parallel (Pillow releases the GIL while encoding) and with our options, and hand trimesh
    images that replay those bytes. Any other format request still encodes normally.
    """
    from PIL import Image

    class _Encoded(Image.Image):
        def save(self, fp, format=None, **params):  # noqa: A002 (Pillow's signature)
            if format is not None and str(format).upper() == fmt and hasattr(fp, "write"):
                fp.write(payload)
                return None
            return super().save(fp, format, **params)

    img.__class__ = _Encoded
    return img


def _encode_both(base_color: Tensor, metallic_roughness: Tensor, texture_format: str, png_compress_level: int):
    """Encode both textures in two threads while polling for cancellation (a cancelled run does not wait for
    the encoders: they finish in the background and their result is dropped)."""
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        jobs = [pool.submit(_encode, base_color, texture_format, png_compress_level),
                pool.submit(_encode, metallic_roughness, texture_format, png_compress_level)]
        while True:
            _, pending = wait(jobs, timeout=0.05, return_when=FIRST_EXCEPTION)
            if not pending or any(job.done() and job.exception() is not None for job in jobs):
                break
            checkpoint("encoding the GLB textures")
        return tuple(job.result() for job in jobs)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _glb_bytes(vertices: Tensor, faces: Tensor, normals: Tensor, uvs: Tensor, base_color: Tensor,
               metallic_roughness: Tensor, alpha_mode: str, alpha_cutoff: float, double_sided: bool,
               texture_format: str, png_compress_level: int) -> bytes:
    try:
        import trimesh
        from trimesh.exchange.gltf import export_glb
        from trimesh.visual.material import PBRMaterial
        from trimesh.visual.texture import TextureVisuals
    except ImportError as err:
        raise BackendError("GLB export needs trimesh: pip install 'trimesh>=4.5'") from err
    pos = z_up_to_y_up(vertices.detach().to("cpu", torch.float64)).numpy()
    nrm = z_up_to_y_up(normals.detach().to("cpu", torch.float64)).numpy()
    uv = uvs.detach().to("cpu", torch.float64).numpy().copy()
    uv[:, 1] = 1.0 - uv[:, 1]  # trimesh writes 1 − v: net TEXCOORD_0 = raster (u, v)
    base_img, mr_img = _encode_both(base_color, metallic_roughness, texture_format, png_compress_level)
    material = PBRMaterial(
        baseColorTexture=base_img,
        baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8),
        metallicRoughnessTexture=mr_img,
        metallicFactor=1.0,
        roughnessFactor=1.0,
        alphaMode=alpha_mode,
        alphaCutoff=float(alpha_cutoff) if alpha_mode == "MASK" else None,
        doubleSided=bool(double_sided),
    )
    mesh = trimesh.Trimesh(
        vertices=pos,
        faces=faces.detach().to("cpu", torch.int64).numpy(),
        vertex_normals=nrm,
        visual=TextureVisuals(uv=uv, material=material),
        process=False,
    )
    return export_glb(trimesh.Scene(mesh), include_normals=True, extension_webp=texture_format == "webp")


def write_glb(
    path: str | os.PathLike,
    vertices: Tensor,  # [V, 3] float32, model frame (Z-up)
    faces: Tensor,  # [F, 3] int
    normals: Tensor,  # [V, 3] float32 unit vertex normals, model frame
    uvs: Tensor,  # [V, 2] float32 in [0, 1], raster convention (row 0 ↔ v ≈ 0)
    base_color: Tensor,  # [T, T, 4] uint8 RGBA
    metallic_roughness: Tensor,  # [T, T, 3] uint8 (0, roughness, metallic)
    *,
    alpha_mode: str = "OPAQUE",
    alpha_cutoff: float = 0.5,
    double_sided: bool = False,
    texture_format: str = "png",
    png_compress_level: int = 3,
    finish: Callable[[bytes], bytes] | None = None,
) -> int:
    """Write a textured PBR mesh as a GLB file atomically; returns the number of bytes written.

    ``png_compress_level`` is zlib's level for PNG textures (0–9; 3 halves the encoding time of Pillow's default 6
    for files ~25 % larger). WebP textures use Pillow's defaults (lossy, quality 80, method 4), as official.
    ``finish`` may rewrite the encoded GLB bytes before they are written (same length; e.g. exact accessor data).

    ``path`` must end in ``.glb`` and may not be an existing directory/device/FIFO (checked before encoding; see
    :mod:`.output_file`); missing folders are created. Raises :class:`InputError` for bad options, non-finite or
    out-of-range geometry and path/disk problems (one line with the fix), and
    :class:`~trellis2_core.errors.CancelledError` when an active cancel poll fires before the final rename; in
    every failure case no file (and no temporary file) is left and an existing file at ``path`` is unchanged.
    """
    if alpha_mode not in ALPHA_MODES:
        raise InputError(f"alpha_mode must be one of {', '.join(ALPHA_MODES)}, got {alpha_mode!r}")
    if texture_format not in TEXTURE_FORMATS:
        raise InputError(f"texture_format must be one of {', '.join(TEXTURE_FORMATS)}, got {texture_format!r}")
    if not 0.0 <= alpha_cutoff <= 1.0:  # (False for NaN)
        raise InputError(f"alpha_cutoff must be in [0, 1], got {alpha_cutoff!r}")
    if not isinstance(png_compress_level, int) or not 0 <= png_compress_level <= 9:
        raise InputError(f"png_compress_level must be in 0..9, got {png_compress_level!r}")
    for name, image, channels in (("base_color", base_color, 4), ("metallic_roughness", metallic_roughness, 3)):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != channels:
            raise InputError(f"{name} must be a uint8 [H, W, {channels}] image, got {image.dtype} {list(image.shape)}")
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise InputError(f"vertices must be a [V, 3] tensor, got {list(vertices.shape)}")
    n = vertices.shape[0]
    if normals.shape != (n, 3) or uvs.shape != (n, 2):
        raise InputError(f"normals [V, 3] and uvs [V, 2] must match the {n} vertices, got {list(normals.shape)} "
                         f"and {list(uvs.shape)}")
    target = check_output_path(path)
    _check_geometry(vertices, faces, normals, uvs)
    checkpoint("writing the GLB")
    data = _glb_bytes(vertices, faces, normals, uvs, base_color, metallic_roughness, alpha_mode, alpha_cutoff,
                      double_sided, texture_format, png_compress_level)
    if finish is not None:
        data = finish(data)
    write_atomically(target, data)
    return len(data)


def _check_geometry(vertices: Tensor, faces: Tensor, normals: Tensor, uvs: Tensor) -> None:
    """Faces index existing vertices; positions, normals and UVs are finite (else trimesh writes garbage)."""
    if faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point or faces.shape[0] == 0:
        raise InputError(f"faces must be a non-empty integer [F, 3] tensor, got {faces.dtype} {list(faces.shape)}")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise InputError(f"faces index vertices {lo}..{hi} but there are {vertices.shape[0]} vertices")
    for name, value in (("vertex positions", vertices), ("normals", normals), ("uvs", uvs)):
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"the GLB {name} contain NaN or infinite values; the mesh is corrupt (re-run the "
                             "export from a valid mesh)")
