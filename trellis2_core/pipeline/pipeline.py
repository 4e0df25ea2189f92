"""``Pipeline``: image → conditioning → structure → shape → material → decoded mesh + PBR voxels (spec §1).

The official ``Trellis2ImageTo3DPipeline.run`` order: preprocess → seed → DINOv3 at 512 (and 1024 unless type
'512') → sparse structure (``cond_512``) → shape (512 / 1024 / cascade) → texture → decode. Sampler settings are the
pipeline.json blocks with the caller's overrides merged on top (§1.4). Models come from a getter (normally a
:class:`~trellis2_core.loading.ModelStore`), loaded on first use. One public method per stage
(:meth:`Pipeline.run_structure`, :meth:`~Pipeline.run_shape`, :meth:`~Pipeline.run_material`,
:meth:`~Pipeline.run_decode`) is what :meth:`Pipeline.run_from_conditioning` and the ComfyUI nodes call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn

from ..cancel import cancel_on_forward, cancel_scope
from ..config import FastPathConfig
from ..errors import InputError
from ..loading import (
    ComfyPipeline, ModelStore, PipelineConfig, as_config, check_model, comfy_pipeline, load_image_cond_model,
    resolve_image_cond_folder, resolve_pipeline_dir,
)
from ..loading.comfy_pipeline import is_comfy_source
from ..models.streaming import weights_on_device
from ..models.structure_decoder import occupancy_to_coords
from ..params import check_device_name, check_dtype_name, check_max_num_tokens, check_seed
from ..preprocess import preprocess_image
from ..sparse.attention import preload_fa4
from .sampler import SamplerParams
from .stages import (
    Conditioning, Decoded, MaterialLatent, PipelineType, ShapeLatent, StageHooks, Structure, decode, decode_shape,
    decode_texture, sample_material, sample_shape, sample_shape_cascade, sample_structure,
)

__all__ = ["Pipeline", "PipelineResult", "SamplerOverrides", "DEFAULT_SEED", "DEFAULT_MAX_NUM_TOKENS"]

DEFAULT_SEED = 42  # §1.5: official run() default
DEFAULT_MAX_NUM_TOKENS = 49152  # §1.3
IMAGE_COND_KEY = "image_cond_model"  # the DINOv3 conditioner's key in the model store


@dataclass(frozen=True)
class SamplerOverrides:
    """User sampler parameters merged over pipeline.json per stage (``{**pipeline, **user}``, §1.4)."""

    sparse_structure: Mapping[str, Any] = field(default_factory=dict)
    shape_slat: Mapping[str, Any] = field(default_factory=dict)
    tex_slat: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    """Everything one run produced; ``decoded.meshes`` are the mesher output before hole filling."""

    pipeline_type: PipelineType
    seed: int
    conditioning: Conditioning
    structure: Structure
    shape: ShapeLatent
    material: MaterialLatent
    decoded: Decoded


class Pipeline:
    """TRELLIS.2 image-to-3D over a pipeline config and a model getter (no global state, no device policy)."""

    def __init__(self, config: PipelineConfig | str | Path, models: Callable[[str], nn.Module] | None = None, *,
                 image_cond_model: nn.Module | None = None, models_dir: str | Path | None = None,
                 comfy_files: ComfyPipeline | None = None) -> None:
        """``comfy_files``: the ComfyUI-core files the models come from (None: the official layout)."""
        self.config = as_config(config)
        self.comfy_files = comfy_files
        if models is None:
            models = comfy_files.model_store() if comfy_files is not None else ModelStore(self.config)
        self.models = models
        self.models_dir = models_dir
        self._image_cond_model = image_cond_model

    @classmethod
    def from_pretrained(cls, source: str | Path, *, models_dir: str | Path | None = None,
                        device: str | torch.device = "cpu", dtype_override: torch.dtype | str | None = None,
                        offline: bool | None = None, vram_preset: str = "high",
                        comfy_folders: Mapping[str, Sequence[str | Path]] | None = None) -> "Pipeline":
        """Resolve ``source`` and set up lazy model loading; nothing is loaded yet (see :meth:`check_ready`).

        ``source``: a pipeline folder, a ``<models_dir>/trellis2/<name>`` name, a Hugging Face repo id, or
        ``comfy:<bundle>``: ComfyUI core's own TRELLIS.2 files, found in ``models_dir``'s ``diffusion_models`` /
        ``unet``, ``vae`` and ``clip_vision`` folders (or in ``comfy_folders``: kind → folders, as ComfyUI's
        ``folder_paths`` lists them). ``vram_preset`` ('high', 'medium', 'low', 'auto') as in
        :class:`~trellis2_core.loading.ModelStore`.
        """
        check_device_name(device)
        check_dtype_name(dtype_override, "dtype_override")
        if torch.device(device).type == "cuda":
            preload_fa4()  # the optional FA4's slow import overlaps the weight loading that follows
        if is_comfy_source(source):
            if models_dir is None and comfy_folders is None:
                raise InputError(f"pipeline {source!r} names ComfyUI-core files: pass models_dir (--models-dir), "
                                 "ComfyUI's models folder holding diffusion_models/, vae/ and clip_vision/")
            files = comfy_pipeline(models_dir, name=str(source), folders=comfy_folders)
            store = files.model_store(device=device, dtype_override=dtype_override, offline=offline,
                                      vram_preset=vram_preset)
            return cls(files.config, store, models_dir=models_dir, comfy_files=files)
        root = resolve_pipeline_dir(source, models_dir=models_dir, offline=offline)
        config = PipelineConfig.from_pipeline_json(root)
        store = ModelStore(config, device=device, dtype_override=dtype_override, offline=offline,
                           vram_preset=vram_preset)
        return cls(config, store, models_dir=models_dir)

    # ------------------------------------------------------------------ conditioning
    @property
    def image_cond_model(self) -> nn.Module:
        """The DINOv3 conditioner, loaded on first use (§3)."""
        if self._image_cond_model is None:
            device = getattr(self.models, "device", "cpu")
            residency = getattr(self.models, "residency", None)
            offloads = residency is not None and residency.offloads
            where = "cpu" if offloads else device
            if self.comfy_files is not None:
                model = self.comfy_files.load_image_cond_model(device=where)
            else:
                model = load_image_cond_model(self.config, models_dir=self.models_dir, device=where,
                                              offline=getattr(self.models, "offline", None))
            self._image_cond_model = self.models.adopt(IMAGE_COND_KEY, model) if offloads else model
        return self._image_cond_model

    def condition(self, image: Image.Image, pipeline_type: PipelineType | str | None = None) -> Conditioning:
        """DINOv3 tokens at 512 px and, unless the type is '512', at 1024 px (§1.1 stage 1)."""
        ptype = self._type(pipeline_type)
        extractor = self.image_cond_model
        with weights_on_device(extractor), cancel_on_forward(extractor, where="image conditioning (DINOv3)"):
            cond_512 = extractor.features(image, 512)
            cond_1024 = extractor.features(image, 1024) if ptype.resolution != 512 else None
        return Conditioning(cond_512, cond_1024)

    @property
    def image_cond_model_loaded(self) -> bool:
        """Whether the DINOv3 conditioner is already in memory (given or loaded)."""
        return self._image_cond_model is not None

    # ------------------------------------------------------------------ checks
    def check_ready(self, pipeline_type: PipelineType | str | None = None,
                    samplers: SamplerOverrides | None = None, *, label: str = "pipeline type") -> PipelineType:
        """Check, before any model loads, that a run of ``pipeline_type`` with ``samplers`` can start.

        Every stage's sampler settings (pipeline.json merged with the overrides) are valid, the normalisations
        exist, and for each model the run needs that is not loaded yet: its checkpoint files exist, its .json
        builds the model and the safetensors header matches it (keys, shapes, dtypes; no tensor is read). The DINOv3
        folder is located. Models from a custom getter (not a :class:`ModelStore`) are not checked.

        Raises:
            InputError: bad pipeline type or sampler settings (``label`` names the type's flag/widget).
            WeightsError: a missing or broken checkpoint, naming the file and the fix.
        """
        ptype = pipeline_type if isinstance(pipeline_type, PipelineType) else PipelineType.parse(
            pipeline_type or self.config.default_pipeline_type, label)
        samplers = samplers or SamplerOverrides()
        for stage in ("sparse_structure", "shape_slat", "tex_slat"):
            self.sampler_params(stage, getattr(samplers, stage))
        for latent in ("shape_slat", "tex_slat"):
            self.config.normalization(latent)
        store = self.models
        files = self.comfy_files
        if files is not None:
            files.check_pipeline_type(ptype)
        if isinstance(store, ModelStore):
            for key in ptype.model_keys:
                if key in store:
                    continue
                if files is not None:
                    files.check_model(key, dtype_override=store.dtype_override)
                else:
                    check_model(self.config, key, dtype_override=store.dtype_override, offline=store.offline)
            if self._image_cond_model is None:
                if files is not None:
                    files.check_image_cond_model()
                else:
                    resolve_image_cond_folder(self.config, models_dir=self.models_dir, offline=store.offline)
        return ptype

    # ------------------------------------------------------------------ runs
    def _type(self, pipeline_type: PipelineType | str | None) -> PipelineType:
        if isinstance(pipeline_type, PipelineType):
            return pipeline_type
        return PipelineType.parse(pipeline_type or self.config.default_pipeline_type)

    def sampler_params(self, stage: str, overrides: Mapping[str, Any] | None = None) -> SamplerParams:
        """Sampler settings of ``stage`` ('sparse_structure', 'shape_slat', 'tex_slat') with user overrides."""
        spec = self.config.sampler(stage)
        block = {"name": spec.name, "args": dict(spec.args), "params": dict(spec.params)}
        return SamplerParams.from_pipeline(block, overrides)

    def run(self, image: Image.Image, *, seed: int = DEFAULT_SEED, pipeline_type: str | None = None,
            preprocess: bool = True, mask: Any = None, samplers: SamplerOverrides | None = None,
            max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS, hooks: StageHooks = StageHooks(),
            fast: FastPathConfig | None = None) -> PipelineResult:
        """Official ``run``: preprocess (optional) → DINOv3 → :meth:`run_from_conditioning`."""
        ptype = self._type(pipeline_type)
        if preprocess:
            image = preprocess_image(image, mask)
        with cancel_scope(hooks.should_cancel):  # DINOv3 polls between its blocks
            cond = self.condition(image, ptype)
        return self.run_from_conditioning(cond, seed=seed, pipeline_type=ptype, samplers=samplers,
                                          max_num_tokens=max_num_tokens, hooks=hooks, fast=fast)

    # ------------------------------------------------------------------ stages (one call each; the nodes' API)
    def stage_keys(self, stage: str, pipeline_type: PipelineType | str | None = None) -> tuple[str, ...]:
        """The models stage ``stage`` ('structure', 'shape', 'material', 'decode') uses for ``pipeline_type``."""
        return self._type(pipeline_type).stage_keys(stage)

    @torch.no_grad()
    def run_structure(self, cond: Conditioning, generator: torch.Generator, *,
                      pipeline_type: PipelineType | str | None = None, sampler: Mapping[str, Any] | None = None,
                      hooks: StageHooks = StageHooks(), fast: FastPathConfig | None = None) -> Structure:
        """Stage 2 (§1.1): sparse-structure sampling + occupancy, with the 512 px tokens, at ``pipeline_type``'s
        structure grid (default: pipeline.json's type). ``sampler`` overrides pipeline.json's settings."""
        ptype = self._type(pipeline_type)
        get = self.models
        return sample_structure(get("sparse_structure_flow_model"), get("sparse_structure_decoder"), cond.at(512),
                                self.sampler_params("sparse_structure", sampler), ptype.ss_res, generator, hooks,
                                fast=fast)

    @torch.no_grad()
    def run_shape(self, cond: Conditioning, structure: Structure, generator: torch.Generator, *,
                  pipeline_type: PipelineType | str | None = None, sampler: Mapping[str, Any] | None = None,
                  max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS, hooks: StageHooks = StageHooks(),
                  fast: FastPathConfig | None = None) -> ShapeLatent:
        """Stage 3 (§1.2-1.3): the shape latent on ``structure``'s voxels, at 512/1024 or as a cascade. A structure
        sampled at another grid is re-pooled from its occupancy logits to this type's grid."""
        ptype = self._type(pipeline_type)
        check_max_num_tokens(max_num_tokens)
        coords = (structure.coords if structure.resolution == ptype.ss_res
                  else occupancy_to_coords(structure.logits, ptype.ss_res))
        params = self.sampler_params("shape_slat", sampler)
        norm = self.config.normalization("shape_slat")
        get = self.models
        if ptype.cascade:
            return sample_shape_cascade(
                get("shape_slat_flow_model_512"), get("shape_slat_flow_model_1024"), get("shape_slat_decoder"),
                cond.at(512), cond.at(1024), coords, params, norm, ptype.resolution, generator, max_num_tokens,
                hooks, fast=fast)
        return sample_shape(get(ptype.shape_model), cond.at(ptype.cond_resolution), coords, params, norm,
                            ptype.resolution, generator, hooks, fast=fast)

    @torch.no_grad()
    def run_material(self, cond: Conditioning, shape: ShapeLatent, generator: torch.Generator, *,
                     pipeline_type: PipelineType | str | None = None, sampler: Mapping[str, Any] | None = None,
                     hooks: StageHooks = StageHooks(), fast: FastPathConfig | None = None) -> MaterialLatent:
        """Stage 4 (§1.1): the texture latent on ``shape``'s voxels."""
        ptype = self._type(pipeline_type)
        return sample_material(
            self.models(ptype.tex_model), cond.at(ptype.cond_resolution), shape.slat,
            self.sampler_params("tex_slat", sampler), self.config.normalization("shape_slat"),
            self.config.normalization("tex_slat"), generator, hooks, fast=fast)

    @torch.no_grad()
    def run_decode(self, shape: ShapeLatent, material: MaterialLatent | None = None) -> Decoded:
        """Stages 5-6: meshes (before hole filling) and, with ``material``, the PBR voxels."""
        get = self.models
        return decode(get("shape_slat_decoder"), get("tex_slat_decoder") if material is not None else None,
                      shape.slat, material.slat if material is not None else None, shape.res)

    @torch.no_grad()
    def run_from_conditioning(self, cond: Conditioning, *, seed: int = DEFAULT_SEED,
                              pipeline_type: PipelineType | str | None = None,
                              samplers: SamplerOverrides | None = None,
                              max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
                              hooks: StageHooks = StageHooks(),
                              fast: FastPathConfig | None = None,
                              on_shape_decoded: Callable[[Decoded], None] | None = None) -> PipelineResult:
        """Sampling and decoding from precomputed conditioning; noise order SS, shape (LR, HR), texture (§1.5).

        ``on_shape_decoded``: when given, the shape is decoded *before* the material is sampled and this is called
        with the meshes (no PBR yet), so that the caller can start mesh work on the CPU (e.g.
        :func:`~trellis2_core.postprocess.export.start_geometry`) while the GPU samples the material. The results
        are the same either way (decoding draws no noise); the meshes and subdivisions stay in memory meanwhile."""
        ptype = self._type(pipeline_type)
        seed = check_seed(seed)
        check_max_num_tokens(max_num_tokens)
        samplers = samplers or SamplerOverrides()
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        structure = self.run_structure(cond, gen, pipeline_type=ptype, sampler=samplers.sparse_structure,
                                       hooks=hooks, fast=fast)
        shape = self.run_shape(cond, structure, gen, pipeline_type=ptype, sampler=samplers.shape_slat,
                               max_num_tokens=max_num_tokens, hooks=hooks, fast=fast)
        shapes = None
        if on_shape_decoded is not None:
            with cancel_scope(hooks.should_cancel):  # decoders poll between their blocks
                shapes = decode_shape(self.models("shape_slat_decoder"), shape.slat, shape.res)
            on_shape_decoded(shapes)
        material = self.run_material(cond, shape, gen, pipeline_type=ptype, sampler=samplers.tex_slat, hooks=hooks,
                                     fast=fast)
        with cancel_scope(hooks.should_cancel):  # decoders poll between their blocks
            if shapes is None:
                decoded = self.run_decode(shape, material)
            else:
                decoded = decode_texture(self.models("tex_slat_decoder"), material.slat, shapes)
        return PipelineResult(ptype, int(seed), cond, structure, shape, material, decoded)
