"""``texture_mesh(mesh, image, "out.glb")``: TRELLIS.2 PBR textures baked onto the user's own mesh.

Beyond the official texturing pipeline (spec §11, golden README "What the official texturing code keeps"): the
input's UVs are kept and baked onto (the official code always re-unwraps), its vertices and faces are written back
unchanged, and the result sits in the input's own frame (the official output stays in the normalised, axis-swapped
unit cube). A mesh without UVs (or ``unwrap='always'``) is unwrapped; then vertices are split along the new seams,
each copy keeping its input position bit for bit. The texture lookup bakes every covered texel by trilinear sampling
of the PBR voxels at the texel's surface point in the working frame (the voxels' frame), then seam-fills the rest.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image

from ..cancel import cancel_scope, checkpoint
from ..errors import InputError
from ..mesh.checks import check_int
from ..mesh.types import Mesh
from ..pipeline.stages import StageHooks
from ..postprocess.bake import bake_pbr_textures
from ..postprocess.glb import check_output_path, write_glb
from ..postprocess.unwrap import unwrap_uv
from ..preprocess.background import load_matting_model, prepare_image, resolve_background
from .frame import preprocess_mesh
from .glb_exact import patch_accessor, texcoords_for
from .mesh_io import InputMesh, load_input_mesh
from .pipeline import TexturingPipeline, TexturingResult, check_resolution

__all__ = ["texture_mesh", "TextureMeshResult", "UNWRAP_MODES", "DEFAULT_TEXTURING_PIPELINE"]

log = logging.getLogger(__name__)

UNWRAP_MODES = ("auto", "always", "never")
DEFAULT_TEXTURING_PIPELINE = "microsoft/TRELLIS.2-4B"


@dataclass(frozen=True)
class TextureMeshResult:
    """What :func:`texture_mesh` wrote."""

    path: Path
    kept_uvs: bool  # the input's UVs were used (False: the mesh was unwrapped)
    coverage: float  # fraction of texels covered by a triangle (the rest is seam fill)
    texturing: TexturingResult
    timings: dict[str, float] = field(default_factory=dict)


def _y_to_z_up(p: torch.Tensor) -> torch.Tensor:
    """Input (Y-up) → the GLB writer's model frame (Z-up), ``(x, y, z) → (x, −z, y)``: exact (a sign and a swap)."""
    return torch.stack((p[:, 0], -p[:, 2], p[:, 1]), dim=1)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` float32 (zero-area neighbourhoods get +Z)."""
    v = vertices.to(torch.float64)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    acc = torch.zeros_like(v).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
    length = acc.norm(dim=1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return torch.where(length > 1e-30, acc / length.clamp_min(1e-30), fallback).to(torch.float32)


def _condition_image(image: Any, background: str, matting_model: Any, device: Any) -> Image.Image:
    from ..arguments import load_image

    img = load_image(image) if not isinstance(image, Image.Image) else image
    mode = resolve_background(img, background, None)
    matting = load_matting_model(matting_model, device=device) if mode == "model" else None
    return prepare_image(img, background=background, matting=matting)


def _layout(src: InputMesh, unwrap: str, texture_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """``(vmap [V'] int64 into the input vertices, faces [F, 3], raster uvs [V', 2], kept_uvs)``."""
    faces = torch.from_numpy(src.faces)
    if src.uvs is not None and unwrap != "always":
        uv = torch.from_numpy(np.asarray(src.uvs, dtype=np.float64))
        outside = float(((uv < 0) | (uv > 1)).any(dim=1).double().mean())
        if outside > 0:
            log.warning("%s: %.1f%% of the UVs lie outside [0, 1] (tiling); only the [0, 1] square is baked",
                        src.name, 100 * outside)
        raster = torch.stack((uv[:, 0], 1.0 - uv[:, 1]), dim=1).to(torch.float32)  # row 0 = top = glTF v 0
        return torch.arange(src.vertices.shape[0]), faces, raster, True
    if unwrap == "never":
        raise InputError(f"{src.name}: the mesh has no UVs and unwrap='never'; unwrap it first or use "
                         "unwrap='auto'")
    vertices = torch.from_numpy(np.asarray(src.vertices, dtype=np.float32))
    atlas = unwrap_uv(Mesh(vertices, faces.to(torch.int32)), texture_size=texture_size)
    return atlas.vmap, atlas.faces.to(torch.int64), atlas.uvs, False


def texture_mesh(mesh: Any, image: Any, output: str | Path, *,
                 pipeline: str | Path | TexturingPipeline = DEFAULT_TEXTURING_PIPELINE, seed: int = 42,
                 resolution: int = 1024, texture_size: int = 2048, unwrap: str = "auto", background: str = "auto",
                 matting_model: Any = None, sampler: Mapping[str, Any] | None = None, device: str = "cpu",
                 models_dir: str | Path | None = None, texture_format: str = "png", double_sided: bool = True,
                 progress: Any = None, should_cancel: Callable[[], bool] | None = None) -> TextureMeshResult:
    """Texture ``mesh`` from ``image`` with TRELLIS.2 and write ``output`` (GLB) with the same geometry.

    Args:
        mesh: a GLB/glTF/OBJ/PLY path, a ``trimesh`` mesh/scene with one object, or ``(vertices, faces[, uvs])``.
        image: the reference image (PIL image or path); its background is handled as in ``image_to_glb``.
        output: the ``.glb`` to write (checked before any model loads; written atomically).
        pipeline: folder / ComfyUI name / ``demo`` / HF repo holding ``texturing_pipeline.json``, or a pipeline.
        resolution: texturing grid (official 512, 1024, 1536). texture_size: texture side in texels.
        unwrap: 'auto' (keep the input's UVs, unwrap only a mesh without), 'always', or 'never' (error if none).
        progress: an object with ``step(stage, i, n)`` (and optionally ``cancelled() -> bool``), as image_to_glb.
        should_cancel: a poll; when it returns True the run stops with CancelledError and writes nothing.

    The written vertices, faces and UVs are the input's (with unwrap: the input's positions on split seams).
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    if unwrap not in UNWRAP_MODES:
        raise InputError(f"unwrap must be one of {', '.join(UNWRAP_MODES)}, got {unwrap!r}")
    resolution = check_resolution(resolution, "resolution")
    texture_size = check_int(texture_size, "texture_size", 64, 8192)
    target = check_output_path(output)
    src = load_input_mesh(mesh)
    prepared = preprocess_mesh(torch.from_numpy(np.asarray(src.vertices)), torch.from_numpy(src.faces))
    report = getattr(progress, "step", None)
    polls = [p for p in (should_cancel, getattr(progress, "cancelled", None)) if p is not None]
    poll = (lambda: any(p() for p in polls)) if polls else None
    hooks = StageHooks(progress=report, should_cancel=poll)
    with cancel_scope(poll):
        cond_image = _condition_image(image, background, matting_model, device)
        timings["load"] = time.perf_counter() - clock
        pipe = pipeline if isinstance(pipeline, TexturingPipeline) else TexturingPipeline.from_pretrained(
            pipeline, models_dir=models_dir, device=device)
        if report:
            report("condition", 0, 1)
        cond = pipe.condition(cond_image, resolution)
        if report:
            report("condition", 1, 1)
        start = time.perf_counter()
        result = pipe.run_from_conditioning(prepared, cond, seed=seed, resolution=resolution, sampler=sampler,
                                            hooks=hooks)
        timings["generate"] = time.perf_counter() - start
        start = time.perf_counter()
        if report:
            report("bake", 0, 1)
        vmap, faces, raster_uv, kept = _layout(src, unwrap, texture_size)
        checkpoint("texture baking")
        dev = result.pbr.attrs.device  # bake where the voxels are (the GPU when the pipeline ran there)
        work = prepared.vertices.to(torch.float32)[vmap]  # the voxels' frame
        baked = bake_pbr_textures(raster_uv.to(dev, torch.float32), faces.to(dev), work.to(dev), result.pbr,
                                  texture_size)
        in_vertices = torch.from_numpy(np.asarray(src.vertices, dtype=np.float64))[vmap]
        normals = _vertex_normals(in_vertices, faces)
        file_uv = texcoords_for(np.asarray(src.uvs) if kept else _trimesh_uv(raster_uv))
        write_glb(target, _y_to_z_up(in_vertices), faces, _y_to_z_up(normals.double()).float(), raster_uv,
                  baked.base_color, baked.metallic_roughness, double_sided=double_sided,
                  texture_format=texture_format,
                  finish=lambda data: patch_accessor(data, "TEXCOORD_0", file_uv))
        if report:
            report("bake", 1, 1)
        timings["bake"] = time.perf_counter() - start
    log.info("texture_mesh: %s (%d faces, %s UVs, coverage %.1f%%) in %.1fs", target.name, faces.shape[0],
             "kept" if kept else "new", 100 * baked.coverage, time.perf_counter() - clock)
    return TextureMeshResult(path=target, kept_uvs=kept, coverage=baked.coverage, texturing=result, timings=timings)


def _trimesh_uv(raster_uv: torch.Tensor) -> np.ndarray:
    """A new layout's UVs in trimesh's convention (``v`` up)."""
    uv = raster_uv.double().numpy()
    return np.stack((uv[:, 0], 1.0 - uv[:, 1]), axis=1)
