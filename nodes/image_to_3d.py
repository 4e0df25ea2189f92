"""Image to 3D node: the whole pipeline in one node for beginners (``trellis2_core.api.image_to_glb``)."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from trellis2_core.api import image_to_glb
from trellis2_core.pipeline.stages import PipelineType
from trellis2_core.postprocess import fill_holes
from trellis2_core.errors import InputError
from trellis2_core.params import PIPELINE_TYPES, check_faces, check_run_options
from trellis2_core.pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS
from trellis2_core.preprocess.background import (
    DEFAULT_MATTING_MODEL, load_matting_model, needs_matting, prepare_image,
)

from . import comfy_bridge as bridge
from .core_io import textured_core_mesh
from .export import UI_KEY, export_config, export_inputs
from .checks import check_widgets, node_title, require_asset, widget_label
from .images import batch_size, check_image, check_mask, mask_at, to_pil
from .paths import DEFAULT_PREFIX, filename_prefix_input, next_output_path
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .sample import SEED_MAX
from .types import CATEGORY, CORE_FILE_3D_GLB, CORE_MESH, IMAGE, MASK, MESH_ASSET, PIPELINE, STRING, MeshAsset

__all__ = ["Trellis2ImageTo3D"]

_EXPORT_UNITS = 6  # export_glb steps


class Trellis2ImageTo3D:
    """One image in, one textured GLB out, with the official settings; the preview shows the result."""

    DESCRIPTION = ("Runs everything with the official settings: background handling, DINOv3, structure, shape, "
                   "material, decoding and GLB export to output/<prefix>_00001_.glb, then previews it. An image "
                   "batch makes one GLB per image (each with this seed) under one progress bar; for folders of "
                   "images outside ComfyUI see 'python -m trellis2_core batch'.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    OUTPUT_NODE = True
    RETURN_TYPES = (STRING, MESH_ASSET, CORE_MESH, CORE_FILE_3D_GLB)
    RETURN_NAMES = ("glb_path", "mesh", "core_mesh", "model_3d")
    OUTPUT_TOOLTIPS = (
        "Path of the (first) GLB relative to ComfyUI's output folder.",
        "The decoded mesh + PBR voxels (holes filled), e.g. to export again with other settings.",
        "ComfyUI's MESH of what the GLBs hold (Y-up, UVs, normals, base-colour and metallic-roughness textures).",
        "The (first) GLB as ComfyUI's 3D file, e.g. for core's Preview 3D (Advanced) or Save 3D (Advanced).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
                "image": (IMAGE, {"tooltip": "The object image. Without transparency and without a mask a matting "
                                             "model removes the background (downloads ZhengPeng7/BiRefNet once)."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": "Random seed (official default 42); every image of a batch uses it."}),
                "resolution": (list(PIPELINE_TYPES), {
                    "default": "1024_cascade",
                    "tooltip": "512 (fastest), 1024, 1024_cascade (official default) or 1536_cascade (most detail, "
                               "slowest)."}),
                "steps": ("INT", {"default": 12, "min": 1, "max": 200,
                                  "tooltip": "Sampler steps of every stage (official 12)."}),
                "filename_prefix": filename_prefix_input(DEFAULT_PREFIX),
                **export_inputs(),
            },
            "optional": {
                "mask": (MASK, {"tooltip": "Object mask, 1 = object (e.g. from Remove Background); replaces "
                                           "background removal."}),
            },
        }

    def generate(self, pipeline: PipelineHandle, image: Tensor, seed: int, resolution: str, steps: int,
                 filename_prefix: str, texture_size: int, target_faces: int, alpha_mode: str, double_sided: bool,
                 texture_format: str, mask: Tensor | None = None) -> dict[str, Any]:
        node = type(self)
        title = node_title(node)
        check_widgets(node, {"seed": seed, "resolution": resolution, "steps": steps,
                             "filename_prefix": filename_prefix, "texture_size": texture_size,
                             "target_faces": target_faces, "alpha_mode": alpha_mode, "double_sided": double_sided,
                             "texture_format": texture_format})
        require_asset(pipeline, PipelineHandle, node, "pipeline", "Load TRELLIS.2 Model")
        check_run_options(seed=seed, steps=steps, guidance=None, samplers=None, max_num_tokens=DEFAULT_MAX_NUM_TOKENS,
                          pipeline_type=resolution, names={"seed": widget_label(node, "seed"),
                                                           "steps": widget_label(node, "steps"),
                                                           "pipeline_type": widget_label(node, "resolution")})
        check_faces(target_faces, widget_label(node, "target_faces"))  # the library's bound (2**24)
        ptype = PipelineType.parse(resolution, widget_label(node, "resolution"))
        try:
            cfg = export_config(texture_size, target_faces, alpha_mode, double_sided, texture_format)
        except InputError as err:
            raise InputError(f"{title}: {err}") from err
        image = check_image(image, "image", title)
        mask = check_mask(mask, image, "mask", title)
        n = batch_size(image)
        for i in range(n):  # every image's foreground is checked before the first model runs
            pil = to_pil(image, i)
            item_mask = mask_at(mask, i)
            np_mask = None if item_mask is None else item_mask.numpy()
            if not needs_matting(pil, "auto", np_mask):
                try:
                    prepare_image(pil, background="auto", mask=np_mask)
                except InputError as err:
                    raise InputError(f"{title}: image {i}: {err}") from err
        per_item = 3 + int(steps) * (4 if ptype.cascade else 3) + 1 + _EXPORT_UNITS
        progress = StageProgress(per_item * n)
        entries, items, assets = [], [], []
        with comfy_errors(), pipeline.models_for(ptype.model_keys):
            for i in range(n):
                pil = to_pil(image, i)
                item_mask = mask_at(mask, i)
                np_mask = None if item_mask is None else item_mask.numpy()
                matting = None
                if needs_matting(pil, "auto", np_mask):
                    matting = pipeline.extra_model(f"matting:{DEFAULT_MATTING_MODEL}", lambda: load_matting_model(
                        DEFAULT_MATTING_MODEL, device=pipeline.device, models_dir=bridge.models_dir()))
                target = next_output_path(bridge.output_dir(), filename_prefix, "glb")
                result = image_to_glb(pil, target.path, pipeline=pipeline.pipeline, pipeline_type=ptype.name,
                                      seed=int(seed), steps=int(steps), export=cfg, background="auto",
                                      mask=np_mask, matting_model=matting, progress=progress,
                                      fast=pipeline.fast)
                entries.append({"filename": target.name, "subfolder": target.subfolder, "type": "output",
                                "faces": result.export.faces, "vertices": result.export.vertices})
                assets.append(result.export.asset)
                decoded = result.pipeline.decoded
                items.append(MeshAsset(mesh=fill_holes(decoded.meshes[0]), pbr=decoded.pbr[0],
                                       resolution=decoded.res))
        first = entries[0]
        path = f"{first['subfolder']}/{first['filename']}" if first["subfolder"] else first["filename"]
        model_3d = bridge.core_file_3d(bridge.output_dir() / path)
        return {"ui": {UI_KEY: entries}, "result": (path, tuple(items), textured_core_mesh(assets), model_3d)}
