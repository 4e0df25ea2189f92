"""Official checkpoint layout → our models: sources (local / ComfyUI models dir / Hugging Face), pipeline.json,
strict safetensors loading, and a lazy per-key model store (spec §4.1); also ComfyUI core's own TRELLIS.2 files
(``comfy_files``, ``comfy_pipeline``)."""
from __future__ import annotations

from .comfy_files import ComfyFileSet, find_comfy_pipeline, list_comfy_pipelines
from .comfy_pipeline import ComfyPipeline, comfy_pipeline
from .config import DEFAULT_PIPELINE_TYPE, PIPELINE_JSON, Normalization, PipelineConfig, SamplerSpec
from .loader import (
    KEY_FIXES, ModelStore, as_config, check_model, load_image_cond_model, load_model, read_model_json,
    resolve_image_cond_folder,
)
from .sources import resolve_model_files, resolve_model_folder, resolve_pipeline_dir

__all__ = [
    "PipelineConfig", "SamplerSpec", "Normalization", "PIPELINE_JSON", "DEFAULT_PIPELINE_TYPE", "load_model",
    "check_model", "load_image_cond_model", "resolve_image_cond_folder", "read_model_json", "ModelStore",
    "KEY_FIXES", "as_config", "resolve_pipeline_dir", "resolve_model_files", "resolve_model_folder",
    "ComfyFileSet", "ComfyPipeline", "comfy_pipeline", "find_comfy_pipeline", "list_comfy_pipelines",
]
