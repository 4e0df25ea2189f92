"""The three sampler nodes: sparse structure → shape latent → material latent (spec §1.1–§1.5, §7).

Seeds follow the official single-seed order (§1.5): the structure node seeds a CPU generator and passes its state
on; the shape and material nodes continue that stream when their ``stage_seed`` is 0, which reproduces
``Pipeline.run(seed=...)`` exactly, or reseed their stage with any other value.
"""
from __future__ import annotations

from typing import Any

import torch

from trellis2_core.errors import InputError
from trellis2_core.loading import official
from trellis2_core.params import PIPELINE_TYPES, check_sampler_overrides
from trellis2_core.pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS
from trellis2_core.pipeline.stages import PipelineType

from .checks import check_widgets, node_title, require_asset, widget_label
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .types import (
    CATEGORY, COND, MATERIAL, PIPELINE, SHAPE, STRUCTURE, CondAsset, MaterialAsset, ShapeAsset, StructureAsset,
    generator_from,
)

__all__ = ["Trellis2SampleStructure", "Trellis2SampleShape", "Trellis2SampleMaterial", "sampler_inputs",
           "STAGE_DEFAULTS", "PIPELINE_TYPES", "SEED_MAX"]

SEED_MAX = 0xFFFFFFFFFFFFFFFF
#: §1.4: the official pipeline.json sampler settings per stage (``loading.official``), the widgets' defaults
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    stage: {**official.SAMPLERS[f"{stage}_sampler"]["params"],
            "guidance_interval": tuple(official.SAMPLERS[f"{stage}_sampler"]["params"]["guidance_interval"])}
    for stage in ("sparse_structure", "shape_slat", "tex_slat")
}


def sampler_inputs(stage: str) -> dict[str, tuple]:
    """Widgets of one sampler stage with the official defaults of §1.4 (tooltips name them)."""
    d = STAGE_DEFAULTS[stage]
    lo, hi = d["guidance_interval"]
    return {
        "steps": ("INT", {"default": d["steps"], "min": 1, "max": 200, "step": 1,
                          "tooltip": f"Euler steps of this stage (official {d['steps']}). Each step is one model "
                                     "call, two while guidance is active."}),
        "guidance_strength": ("FLOAT", {"default": d["guidance_strength"], "min": 0.0, "max": 30.0, "step": 0.1,
                                        "tooltip": "Classifier-free guidance weight (official "
                                                   f"{d['guidance_strength']}); 1 disables guidance."}),
        "guidance_rescale": ("FLOAT", {"default": d["guidance_rescale"], "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Rescales the guided prediction towards the conditional one's "
                                                  f"spread (official {d['guidance_rescale']}); 0 disables."}),
        "guidance_interval_start": ("FLOAT", {"default": lo, "min": 0.0, "max": 1.0, "step": 0.01,
                                              "tooltip": "Guidance is applied only for noise levels t in "
                                                         f"[start, end] (t = 1 is pure noise); official {lo}."}),
        "guidance_interval_end": ("FLOAT", {"default": hi, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": f"End of the guidance interval (official {hi})."}),
        "rescale_t": ("FLOAT", {"default": d["rescale_t"], "min": 0.05, "max": 50.0, "step": 0.05,
                                "tooltip": "Time warp of the step grid: > 1 spends more steps at high noise "
                                           f"(official {d['rescale_t']}); 1 = uniform steps."}),
    }


_SAMPLER_WIDGETS = ("steps", "guidance_strength", "guidance_rescale", "guidance_interval_start",
                    "guidance_interval_end", "rescale_t")


def _overrides(node: type, stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """The sampler widgets of ``node`` checked (declared ranges, then the library's checks) as sampler overrides."""
    missing = [k for k in _SAMPLER_WIDGETS if k not in values]
    unknown = sorted(set(values) - set(_SAMPLER_WIDGETS))
    if missing or unknown:
        raise InputError(f"{node_title(node)}: sampler widgets {', '.join(missing)} missing"
                         + (f"; unknown inputs {', '.join(unknown)}" if unknown else "")
                         + f"; expected {', '.join(_SAMPLER_WIDGETS)}")
    check_widgets(node, values)
    lo, hi = float(values["guidance_interval_start"]), float(values["guidance_interval_end"])
    if lo > hi:
        raise InputError(f"{widget_label(node, 'guidance_interval_start')} ({lo:g}) must not exceed "
                         f"guidance_interval_end ({hi:g}): guidance applies for noise levels t in [start, end]")
    overrides = {"steps": int(values["steps"]), "guidance_strength": float(values["guidance_strength"]),
                 "guidance_rescale": float(values["guidance_rescale"]), "guidance_interval": (lo, hi),
                 "rescale_t": float(values["rescale_t"])}
    labels = {k: widget_label(node, k) for k in overrides}
    labels["guidance_interval"] = widget_label(node, "guidance_interval_start/end")
    return check_sampler_overrides({stage: overrides}, node_title(node), {stage: labels})[stage]


def _need_1024(cond: CondAsset, ptype: PipelineType) -> None:
    if ptype.cond_resolution == 1024 and cond.cond.cond_1024 is None:
        raise InputError(f"resolution {ptype.name!r} needs the 1024 px DINOv3 tokens: set Encode Image's "
                         "'resolutions' to '512 and 1024'")


def _inputs(node: type, pipeline: Any, conditioning: Any, **assets: tuple[Any, type, str]) -> None:
    """The socket inputs of a sampler node are the objects of the nodes they must come from."""
    require_asset(pipeline, PipelineHandle, node, "pipeline", "Load TRELLIS.2 Model")
    require_asset(conditioning, CondAsset, node, "conditioning", "Encode Image")
    for name, (value, cls, source) in assets.items():
        require_asset(value, cls, node, name, source)


def _seed_input(default: int, continue_stream: bool) -> tuple:
    if continue_stream:
        return ("INT", {"default": default, "min": 0, "max": SEED_MAX,
                        "tooltip": "0 = continue the previous stage's random stream (reproduces the official "
                                   "single-seed run); any other value reseeds this stage only. (Not called 'seed' "
                                   "so that ComfyUI does not randomise it after each run.)"})
    return ("INT", {"default": default, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                    "tooltip": "Random seed of the whole generation (official default 42); the later stages "
                               "continue its random stream."})


class Trellis2SampleStructure:
    """Sample the coarse occupancy (which voxels hold the object), conditioned on the image."""

    DESCRIPTION = "Stage 1: samples the 16³ structure latent and decodes it into occupied voxels (§1.1 stage 2)."
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (STRUCTURE,)
    RETURN_NAMES = ("structure",)
    OUTPUT_TOOLTIPS = ("Occupied voxels of the object and the random stream for the next stages.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
            "conditioning": (COND, {"tooltip": "From Encode Image (uses the 512 px tokens)."}),
            "seed": _seed_input(42, continue_stream=False),
            **sampler_inputs("sparse_structure"),
        }}

    def sample(self, pipeline: PipelineHandle, conditioning: CondAsset, seed: int, **params: Any
               ) -> tuple[StructureAsset]:
        node = type(self)
        _inputs(node, pipeline, conditioning)
        check_widgets(node, {"seed": seed})
        values = _overrides(node, "sparse_structure", params)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
        progress = StageProgress(values["steps"] + 1)
        run = pipeline.pipeline
        with comfy_errors(), pipeline.models_for(run.stage_keys("structure")):
            structure = run.run_structure(conditioning.cond, gen, sampler=values, hooks=progress.hooks(),
                                          fast=pipeline.fast)
        progress.advance()
        return (StructureAsset(structure=structure, seed=int(seed), rng_state=gen.get_state()),)


class Trellis2SampleShape:
    """Sample the shape latent on the structure's voxels, at 512, 1024 or as a cascade to 1024/1536."""

    DESCRIPTION = ("Stage 2: samples the shape latent (§1.2). Cascades sample at 512 first, refine the voxels and "
                   "sample again at the target resolution (§1.3).")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (SHAPE,)
    RETURN_NAMES = ("shape",)
    OUTPUT_TOOLTIPS = ("The shape latent and its grid resolution: connect to Sample Material and Decode Mesh.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
            "conditioning": (COND, {"tooltip": "From Encode Image ('512 and 1024' for every type but 512)."}),
            "structure": (STRUCTURE, {"tooltip": "From Sample Structure."}),
            "resolution": (list(PIPELINE_TYPES), {
                "default": "1024_cascade",
                "tooltip": "Output grid: 512 (fast), 1024, or cascades that sample at 512 and refine to 1024/1536 "
                           "(official default 1024_cascade)."}),
            "max_num_tokens": ("INT", {
                "default": DEFAULT_MAX_NUM_TOKENS, "min": 1024, "max": 1_000_000, "step": 1024,
                "tooltip": "1536 cascade only: the resolution is lowered in steps of 128 (down to 1024) until the "
                           "voxel count is below this (official 49152). Lower it to save memory."}),
            "stage_seed": _seed_input(0, continue_stream=True),
            **sampler_inputs("shape_slat"),
        }}

    def sample(self, pipeline: PipelineHandle, conditioning: CondAsset, structure: StructureAsset,
               resolution: str, max_num_tokens: int, stage_seed: int, **params: Any) -> tuple[ShapeAsset]:
        node = type(self)
        _inputs(node, pipeline, conditioning, structure=(structure, StructureAsset, "Sample Structure"))
        check_widgets(node, {"resolution": resolution, "max_num_tokens": max_num_tokens, "stage_seed": stage_seed})
        ptype = PipelineType.parse(resolution, widget_label(node, "resolution"))
        _need_1024(conditioning, ptype)
        if pipeline.pipeline.comfy_files is not None:  # core's files lack the 512 texture flow: say so now
            pipeline.pipeline.comfy_files.check_pipeline_type(ptype)
        values = _overrides(node, "shape_slat", params)
        gen = generator_from(int(stage_seed), structure.rng_state)
        progress = StageProgress(values["steps"] * (2 if ptype.cascade else 1))
        run = pipeline.pipeline
        with comfy_errors(), pipeline.models_for(ptype.stage_keys("shape")):
            shape = run.run_shape(conditioning.cond, structure.structure, gen, pipeline_type=ptype, sampler=values,
                                  max_num_tokens=int(max_num_tokens), hooks=progress.hooks(), fast=pipeline.fast)
        return (ShapeAsset(shape=shape, pipeline_type=ptype, rng_state=gen.get_state()),)


class Trellis2SampleMaterial:
    """Sample the material (PBR) latent on the shape latent's voxels."""

    DESCRIPTION = "Stage 3: samples the texture latent (base colour, metallic, roughness, alpha) (§1.1 stage 4)."
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (MATERIAL,)
    RETURN_NAMES = ("material",)
    OUTPUT_TOOLTIPS = ("The material latent: connect to Decode Mesh together with its shape.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
            "conditioning": (COND, {"tooltip": "From Encode Image (the same one as the shape)."}),
            "shape": (SHAPE, {"tooltip": "From Sample Shape."}),
            "stage_seed": _seed_input(0, continue_stream=True),
            **sampler_inputs("tex_slat"),
        }}

    def sample(self, pipeline: PipelineHandle, conditioning: CondAsset, shape: ShapeAsset, stage_seed: int,
               **params: Any) -> tuple[MaterialAsset]:
        node = type(self)
        _inputs(node, pipeline, conditioning, shape=(shape, ShapeAsset, "Sample Shape"))
        check_widgets(node, {"stage_seed": stage_seed})
        ptype = shape.pipeline_type
        _need_1024(conditioning, ptype)
        values = _overrides(node, "tex_slat", params)
        gen = generator_from(int(stage_seed), shape.rng_state)
        progress = StageProgress(values["steps"])
        run = pipeline.pipeline
        with comfy_errors(), pipeline.models_for(ptype.stage_keys("material")):
            material = run.run_material(conditioning.cond, shape.shape, gen, pipeline_type=ptype, sampler=values,
                                        hooks=progress.hooks(), fast=pipeline.fast)
        return (MaterialAsset(material=material, shape=shape),)

