"""``PipelineConfig``: the validated contents of an official ``pipeline.json`` (spec §4.1, §1.4, §5.4).

Schema (``{"name": ..., "args": {...}}``): ``args.models`` maps pipeline keys to checkpoint references
(``ckpts/<name>`` or cross-repo ``owner/repo/ckpts/<name>``); every ``args.<stage>_sampler`` is
``{name, args, params}``; every ``args.<latent>_normalization`` is ``{mean[C], std[C]}``; ``image_cond_model`` and
``rembg_model`` are ``{name, args: {model_name}}``; ``default_pipeline_type`` and optionally ``low_vram``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import InputError, WeightsError
from ..params import parse_pipeline_type

__all__ = ["PipelineConfig", "SamplerSpec", "Normalization", "PIPELINE_JSON", "DEFAULT_PIPELINE_TYPE"]

PIPELINE_JSON = "pipeline.json"
DEFAULT_PIPELINE_TYPE = "1024_cascade"  # §1.1: code default


@dataclass(frozen=True)
class SamplerSpec:
    """One ``*_sampler`` block (§1.4): sampler class name, constructor args, default call params."""

    name: str
    args: Mapping[str, Any]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Normalization:
    """Per-channel latent normalisation (§5.4): flow models work on ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _vectors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if like.shape[-1] != self.channels:
            raise WeightsError(f"pipeline.json's latent normalisation has {self.channels} channels but the latent "
                               f"has {like.shape[-1]}: pipeline.json does not belong to these checkpoints; "
                               "re-download the pipeline folder")
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        return mean, std

    def normalize(self, feats: Tensor) -> Tensor:
        """``(feats - mean) / std`` over the last dim; ``feats [N, C]``."""
        mean, std = self._vectors(feats)
        return (feats - mean) / std

    def denormalize(self, feats: Tensor) -> Tensor:
        """``feats * std + mean`` over the last dim; ``feats [N, C]``."""
        mean, std = self._vectors(feats)
        return feats * std + mean


def _fail(path: Path, what: str) -> WeightsError:
    return WeightsError(f"{path}: malformed {PIPELINE_JSON}: {what}; re-download the pipeline folder")


def _sub_model_name(path: Path, args: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """(class name, ``args.model_name``) of an ``image_cond_model``/``rembg_model`` block, or (None, None)."""
    block = args.get(key)
    if block is None:
        return None, None
    if not isinstance(block, Mapping) or not isinstance(block.get("name"), str):
        raise _fail(path, f"'{key}' must be an object with a string 'name'")
    sub_args = block.get("args", {})
    if not isinstance(sub_args, Mapping):
        raise _fail(path, f"'{key}.args' must be an object")
    model_name = sub_args.get("model_name")
    if model_name is not None and not isinstance(model_name, str):
        raise _fail(path, f"'{key}.args.model_name' must be a string")
    return block["name"], model_name


def _numbers(path: Path, where: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _fail(path, f"'{where}' must be a non-empty list of numbers")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class PipelineConfig:
    """Validated ``pipeline.json``; ``root`` is the folder the relative checkpoint references start from."""

    root: Path
    name: str
    models: Mapping[str, str]  # pipeline key -> checkpoint reference (without .json/.safetensors)
    samplers: Mapping[str, SamplerSpec]  # 'sparse_structure', 'shape_slat', 'tex_slat' -> block
    normalizations: Mapping[str, Normalization]  # 'shape_slat', 'tex_slat' -> mean/std
    image_cond_model: str | None  # e.g. 'facebook/dinov3-vitl16-pretrain-lvd1689m' or a pipeline-relative folder
    image_cond_model_class: str | None  # 'DinoV3FeatureExtractor'
    rembg_model: str | None  # e.g. 'briaai/RMBG-2.0'
    rembg_model_class: str | None  # 'BiRefNet'
    default_pipeline_type: str
    low_vram: bool | None
    raw: Mapping[str, Any]  # the whole parsed json, read-only

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pipeline_json(cls, path: str | Path) -> "PipelineConfig":
        """Parse and validate ``path`` (a ``pipeline.json`` file or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / PIPELINE_JSON
        if not path.is_file():
            raise WeightsError(f"{path}: file not found; a TRELLIS.2 pipeline folder holds {PIPELINE_JSON} + ckpts/")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise _fail(path, f"not valid JSON ({err})") from err
        except OSError as err:
            raise WeightsError(f"{path}: cannot read it ({err}); check its permissions or re-download the pipeline "
                               "folder") from err
        return cls.from_dict(data, root=path.parent, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, root: Path, source: Path | None = None) -> "PipelineConfig":
        """Validate the parsed json ``data``; ``root`` anchors relative model references."""
        path = source or Path(root) / PIPELINE_JSON
        if not isinstance(data, Mapping) or not isinstance(data.get("args"), Mapping):
            raise _fail(path, "expected an object with 'name' and 'args'")
        args = data["args"]
        models = args.get("models")
        if not isinstance(models, Mapping) or not models:
            raise _fail(path, "'args.models' must be a non-empty object of key -> 'ckpts/<name>'")
        for key, ref in models.items():
            if not isinstance(ref, str) or not ref.strip("/"):
                raise _fail(path, f"model '{key}' must map to a checkpoint path string, got {ref!r}")
        samplers: dict[str, SamplerSpec] = {}
        normalizations: dict[str, Normalization] = {}
        for key, block in args.items():
            if key.endswith("_sampler"):
                if not isinstance(block, Mapping) or not isinstance(block.get("name"), str):
                    raise _fail(path, f"'{key}' must be an object with a string 'name'")
                s_args, s_params = block.get("args", {}), block.get("params", {})
                if not isinstance(s_args, Mapping) or not isinstance(s_params, Mapping):
                    raise _fail(path, f"'{key}.args' and '{key}.params' must be objects")
                samplers[key[: -len("_sampler")]] = SamplerSpec(
                    block["name"], MappingProxyType(dict(s_args)), MappingProxyType(dict(s_params)))
            elif key.endswith("_normalization"):
                if not isinstance(block, Mapping):
                    raise _fail(path, f"'{key}' must be an object with 'mean' and 'std'")
                mean = _numbers(path, f"{key}.mean", block.get("mean"))
                std = _numbers(path, f"{key}.std", block.get("std"))
                if len(mean) != len(std):
                    raise _fail(path, f"'{key}': mean has {len(mean)} values but std has {len(std)}")
                if any(s <= 0 for s in std):
                    raise _fail(path, f"'{key}.std' must be positive")
                normalizations[key[: -len("_normalization")]] = Normalization(mean, std)
        cond_cls, cond_name = _sub_model_name(path, args, "image_cond_model")
        rembg_cls, rembg_name = _sub_model_name(path, args, "rembg_model")
        ptype = args.get("default_pipeline_type", DEFAULT_PIPELINE_TYPE)
        try:
            parse_pipeline_type(ptype, "default_pipeline_type")
        except InputError as err:
            raise _fail(path, f"'default_pipeline_type' {ptype!r} is not a pipeline type like '1024_cascade' "
                              f"({err})") from None
        low_vram = args.get("low_vram")
        if low_vram is not None and not isinstance(low_vram, bool):
            raise _fail(path, "'low_vram' must be true or false")
        name = data.get("name", "")
        if not isinstance(name, str):
            raise _fail(path, "'name' must be a string")
        return cls(
            root=Path(root), name=name, models=MappingProxyType(dict(models)),
            samplers=MappingProxyType(samplers), normalizations=MappingProxyType(normalizations),
            image_cond_model=cond_name, image_cond_model_class=cond_cls, rembg_model=rembg_name,
            rembg_model_class=rembg_cls, default_pipeline_type=ptype, low_vram=low_vram,
            raw=MappingProxyType(dict(data)),
        )

    # ------------------------------------------------------------------ lookups
    def model_ref(self, key: str) -> str:
        """The checkpoint reference of pipeline model ``key``."""
        try:
            return self.models[key]
        except KeyError:
            raise WeightsError(
                f"{self.root / PIPELINE_JSON}: no model '{key}'; available: {', '.join(sorted(self.models))}"
            ) from None

    def sampler(self, stage: str) -> SamplerSpec:
        """The sampler block of ``stage`` ('sparse_structure', 'shape_slat' or 'tex_slat')."""
        try:
            return self.samplers[stage]
        except KeyError:
            raise WeightsError(
                f"{self.root / PIPELINE_JSON}: no '{stage}_sampler'; available: {', '.join(sorted(self.samplers))}"
            ) from None

    def normalization(self, latent: str) -> Normalization:
        """The normalisation of ``latent`` ('shape_slat' or 'tex_slat')."""
        try:
            return self.normalizations[latent]
        except KeyError:
            raise WeightsError(
                f"{self.root / PIPELINE_JSON}: no '{latent}_normalization'; "
                f"available: {', '.join(sorted(self.normalizations))}"
            ) from None
