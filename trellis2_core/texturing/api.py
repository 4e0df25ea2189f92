"""``texture_mesh(mesh, image, "out.glb")``: TRELLIS.2 PBR textures baked onto the user's own mesh.

Beyond the official texturing pipeline (spec §11, golden README "What the official texturing code keeps"): the
input's UVs are kept and baked onto (the official code always re-unwraps), its vertices and faces are written back
unchanged, and the result sits in the input's own frame (the official output stays in the normalised, axis-swapped
unit cube). A mesh without UVs (or ``unwrap='always'``) is unwrapped; then vertices are split along the new seams,
each copy keeping its input position bit for bit (:mod:`.bake_mesh`).
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

from ..cancel import cancel_scope
from ..errors import InputError
from ..loading.residency import VRAM_PRESETS
from ..mesh.checks import check_int
from ..pipeline.stages import StageHooks
from ..postprocess.glb import check_output_path
from ..preprocess.background import load_matting_model, prepare_image, resolve_background
from .bake_mesh import UNWRAP_MODES, bake_onto_mesh, check_unwrap
from .frame import preprocess_mesh
from .mesh_io import load_input_mesh
from .pipeline import TexturingPipeline, TexturingResult, check_resolution

__all__ = ["texture_mesh", "TextureMeshResult", "UNWRAP_MODES", "DEFAULT_TEXTURING_PIPELINE"]

log = logging.getLogger(__name__)

DEFAULT_TEXTURING_PIPELINE = "microsoft/TRELLIS.2-4B"


@dataclass(frozen=True)
class TextureMeshResult:
    """What :func:`texture_mesh` wrote."""

    path: Path
    kept_uvs: bool  # the input's UVs were used (False: the mesh was unwrapped)
    coverage: float  # fraction of texels covered by a triangle (the rest is seam fill)
    texturing: TexturingResult
    timings: dict[str, float] = field(default_factory=dict)


def _condition_image(image: Any, background: str, matting_model: Any, device: Any) -> Image.Image:
    from ..arguments import load_image

    img = load_image(image) if not isinstance(image, Image.Image) else image
    mode = resolve_background(img, background, None)
    matting = load_matting_model(matting_model, device=device) if mode == "model" else None
    return prepare_image(img, background=background, matting=matting)


def texture_mesh(mesh: Any, image: Any, output: str | Path, *,
                 pipeline: str | Path | TexturingPipeline = DEFAULT_TEXTURING_PIPELINE, seed: int = 42,
                 resolution: int = 1024, texture_size: int = 2048, unwrap: str = "auto", background: str = "auto",
                 matting_model: Any = None, sampler: Mapping[str, Any] | None = None, device: str = "cpu",
                 models_dir: str | Path | None = None, texture_format: str = "png", double_sided: bool = True,
                 dtype: str | None = None, vram_preset: str = "auto", progress: Any = None,
                 should_cancel: Callable[[], bool] | None = None) -> TextureMeshResult:
    """Texture ``mesh`` from ``image`` with TRELLIS.2 and write ``output`` (GLB) with the same geometry.

    Args:
        mesh: a GLB/glTF/OBJ/PLY path, a ``trimesh`` mesh/scene with one object, or ``(vertices, faces[, uvs])``.
        image: the reference image (PIL image or path); its background is handled as in ``image_to_glb``.
        output: the ``.glb`` to write (checked before any model loads; written atomically).
        pipeline: folder / ComfyUI name / ``demo`` / HF repo holding ``texturing_pipeline.json``, or a pipeline.
        resolution: texturing grid (official 512, 1024, 1536). texture_size: texture side in texels.
        unwrap: 'auto' (keep the input's UVs, unwrap only a mesh without), 'always', or 'never' (error if none).
        dtype: 'float32' / 'bfloat16' / 'float16' for the models (None: the checkpoints' own), as image_to_glb.
        vram_preset: 'auto', 'high', 'medium' or 'low' (see :mod:`trellis2_core.loading.residency`); both
            apply only when ``pipeline`` is a source, not a ready :class:`TexturingPipeline`.
        progress: an object with ``step(stage, i, n)`` (and optionally ``cancelled() -> bool``), as image_to_glb.
        should_cancel: a poll; when it returns True the run stops with CancelledError and writes nothing.

    The written vertices, faces and UVs are the input's (with unwrap: the input's positions on split seams).
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    check_unwrap(unwrap)
    if vram_preset not in VRAM_PRESETS:
        raise InputError(f"vram_preset must be one of {', '.join(VRAM_PRESETS)}, got {vram_preset!r}")
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
            pipeline, models_dir=models_dir, device=device, dtype_override=dtype, vram_preset=vram_preset)
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
        baked = bake_onto_mesh(src, prepared, result.pbr, target, texture_size=texture_size, unwrap=unwrap,
                               texture_format=texture_format, double_sided=double_sided)
        if report:
            report("bake", 1, 1)
        timings["bake"] = time.perf_counter() - start
    log.info("texture_mesh: %s (%d faces, %s UVs, coverage %.1f%%) in %.1fs", target.name, baked.faces,
             "kept" if baked.kept_uvs else "new", 100 * baked.coverage, time.perf_counter() - clock)
    return TextureMeshResult(path=target, kept_uvs=baked.kept_uvs, coverage=baked.coverage, texturing=result,
                             timings=timings)

