"""The texturing pipeline's config: ``texturing_pipeline.json`` in the official layout (spec §11).

The official texturing example loads ``Trellis2TexturingPipeline.from_pretrained(path,
config_file="texturing_pipeline.json")``: the same folder as the image-to-3D pipeline, a second json naming the
shape encoder, the texture decoder and the two texture flows (plus the texture sampler, both normalisations and the
conditioner). :func:`resolve_texturing_config` finds that file (local folder, ComfyUI models dir, ``demo``, or a
Hugging Face repo, downloading exactly the files it names) and checks that it names the four models.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from .config import PipelineConfig
from .official import TEXTURING_MODEL_KEYS, TEXTURING_PIPELINE_JSON
from .sources import HubMiss, _local_pipeline_candidates, hub_download, looks_like_repo_id, resolve_model_files

__all__ = ["resolve_texturing_config", "texturing_config_from_file", "TEXTURING_PIPELINE_JSON"]


def texturing_config_from_file(path: str | Path) -> PipelineConfig:
    """Parse ``texturing_pipeline.json`` (file or folder) and check it names the four texturing models."""
    path = Path(path)
    if path.is_dir():
        path = path / TEXTURING_PIPELINE_JSON
    config = PipelineConfig.from_pipeline_json(path)
    missing = [k for k in TEXTURING_MODEL_KEYS if k not in config.models]
    if missing:
        raise WeightsError(f"{path}: the texturing config names no {', '.join(missing)} in args.models; "
                           "re-download texturing_pipeline.json from microsoft/TRELLIS.2-4B")
    config.sampler("tex_slat")
    config.normalization("shape_slat")
    config.normalization("tex_slat")
    return config


def resolve_texturing_config(source: str | Path, *, models_dir: str | Path | None = None,
                             offline: bool | None = None) -> PipelineConfig:
    """The texturing config of ``source``: a folder (or its ``texturing_pipeline.json``), a name under
    ``<models_dir>/trellis2``, ``demo`` (tiny random weights), or a Hugging Face repo id."""
    source_str = str(source)
    looked: list[str] = []
    for cand in _local_pipeline_candidates(source_str, models_dir):  # the same places as pipeline.json
        if cand.is_file() and cand.name == TEXTURING_PIPELINE_JSON:
            return texturing_config_from_file(cand)
        if (cand / TEXTURING_PIPELINE_JSON).is_file():
            return texturing_config_from_file(cand)
        looked.append(f"{cand} ({'folder without ' + TEXTURING_PIPELINE_JSON if cand.is_dir() else 'not found'})")
    if source_str == "demo":
        from .random_pipeline import demo_pipeline

        return texturing_config_from_file(demo_pipeline())
    if looks_like_repo_id(source_str):
        try:
            path = hub_download(source_str, TEXTURING_PIPELINE_JSON, offline=offline)
        except HubMiss as miss:
            looked.append(f"Hugging Face repo {source_str} ({miss})")
        else:
            config = texturing_config_from_file(path)
            for key in config.models:
                resolve_model_files(config.root, config.models[key], offline=offline, hub_repo=source_str)
            return config
    raise WeightsError(
        f"cannot find the TRELLIS.2 texturing pipeline {source_str!r}. Looked in: " + "; ".join(looked) + ". "
        f"Put {TEXTURING_PIPELINE_JSON} with ckpts/ (including shape_enc_next_dc_f16c32_fp16.json/.safetensors) in "
        "the pipeline folder, or pass the Hugging Face repo id 'microsoft/TRELLIS.2-4B'.")
