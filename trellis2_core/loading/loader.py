"""Checkpoint loading: official ``ckpts/<name>.{json,safetensors}`` → our model, strictly (spec §4.1, §13.11).

The official loader uses ``strict=False`` and silently keeps random weights for any key it does not find; here a
missing, unexpected or mis-shaped key is an error naming the file. Models are built on the meta device and the
safetensors tensors (memory-mapped) are assigned in, cast to each parameter's dtype (the model's dtype policy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import InputError, WeightsError
from ..models import model_class
from .config import PIPELINE_JSON, PipelineConfig
from .residency import Residency
from .safetensors_io import check_strict, read_strict
from .sources import resolve_model_files, resolve_model_folder

__all__ = ["load_model", "check_model", "load_image_cond_model", "resolve_image_cond_folder", "read_model_json",
           "ModelStore", "KEY_FIXES", "as_config"]

# The one rename/drop table (style §3.8): official class name -> {file key: new key, or None = drop}.
# rope_phases: complex RoPE buffer of the dense flow model, derived data we recompute (§4.3, §13.11).
KEY_FIXES: dict[str, dict[str, str | None]] = {
    "SparseStructureFlowModel": {"rope_phases": None},
}

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def as_config(pipeline_dir_or_config: str | Path | PipelineConfig) -> PipelineConfig:
    """A ``PipelineConfig`` from itself, a pipeline folder or a ``pipeline.json`` path."""
    if isinstance(pipeline_dir_or_config, PipelineConfig):
        return pipeline_dir_or_config
    path = Path(pipeline_dir_or_config)
    return PipelineConfig.from_pipeline_json(path if path.suffix == ".json" else path / PIPELINE_JSON)


def read_model_json(path: Path) -> tuple[str, dict[str, Any]]:
    """``(class name, args)`` of an official ``ckpts/<name>.json``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path}: unreadable or malformed model config ({err}); re-download it") from err
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("args"), dict):
        raise WeightsError(f"{path}: a model config must be {{\"name\": ClassName, \"args\": {{...}}}}; re-download it")
    return data["name"], dict(data["args"])


def _with_dtype(args: dict[str, Any], dtype: torch.dtype | str | None, where: Path) -> dict[str, Any]:
    """Override the json's precision knob (``dtype`` for DiTs, ``use_fp16`` for VAEs) with ``dtype``.

    The VAEs only know float16 and float32 (``use_fp16``): asked for bfloat16 (chosen to avoid float16's overflow)
    they run in float32.
    """
    if dtype is None:
        return args
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype in _DTYPE_NAMES.values() else None
    if dtype not in _DTYPE_NAMES:
        raise InputError(f"dtype override must be float32, float16 or bfloat16 (or None for the checkpoints' own), "
                         f"got {dtype!r}")
    args = dict(args)
    if "dtype" in args:
        args["dtype"] = _DTYPE_NAMES[dtype]
    elif "use_fp16" in args:
        args["use_fp16"] = dtype == torch.float16
    return args


_BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError, OverflowError,
                 ZeroDivisionError, MemoryError)  # what a constructor raises on args of the wrong type or value


def _build_meta(config: PipelineConfig, key: str, dtype_override: torch.dtype | str | None,
                offline: bool | None) -> tuple[nn.Module, str, Path, Path]:
    """``(model on the meta device, class name, safetensors path, json path)`` of pipeline model ``key``."""
    json_path, st_path = resolve_model_files(config.root, config.model_ref(key), offline=offline)
    name, args = read_model_json(json_path)
    args = _with_dtype(args, dtype_override, json_path)
    try:
        cls = model_class(name)
    except ValueError as err:
        raise WeightsError(f"{json_path}: {err}; re-download it") from err
    try:
        with torch.device("meta"):
            model = cls(**args)
    except _BUILD_ERRORS as err:
        raise WeightsError(f"{json_path}: cannot build {name} from its args ({type(err).__name__}: {err}); the "
                           "model config is corrupted or belongs to another model: re-download it") from err
    return model, name, st_path, json_path


def check_model(pipeline_dir_or_config: str | Path | PipelineConfig, key: str, *,
                dtype_override: torch.dtype | str | None = None, offline: bool | None = None) -> None:
    """Check pipeline model ``key`` without loading it: its files exist, its .json builds the model (on the meta
    device) and the safetensors header has exactly the keys, shapes and castable dtypes it needs.

    Raises:
        WeightsError: naming the file at fault and what to do (see :func:`load_model`).
    """
    config = as_config(pipeline_dir_or_config)
    model, name, st_path, json_path = _build_meta(config, key, dtype_override, offline)
    check_strict(st_path, model.state_dict(), fixes=KEY_FIXES.get(name), config_name=str(json_path))


def load_model(pipeline_dir_or_config: str | Path | PipelineConfig, key: str, *,
               device: str | torch.device = "cpu", dtype_override: torch.dtype | str | None = None,
               offline: bool | None = None) -> nn.Module:
    """Build and strictly load pipeline model ``key`` (a key of ``pipeline.json`` ``args.models``).

    Returns the model in eval mode with ``requires_grad=False``, its tensors on ``device``, its dtypes those of the
    model's own policy (the json ``dtype``/``use_fp16``, or ``dtype_override``).
    """
    config = as_config(pipeline_dir_or_config)
    model, name, st_path, json_path = _build_meta(config, key, dtype_override, offline)
    expected = model.state_dict()  # meta tensors: shapes and runtime dtypes
    state = read_strict(st_path, expected, fixes=KEY_FIXES.get(name), device=device, config_name=str(json_path))
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise WeightsError(
            f"{st_path}: {name} still has uninitialised tensors after loading ({', '.join(left[:8])}); "
            "the model class must compute derived buffers at forward time"
        )
    model.requires_grad_(False)
    model.eval()
    return model


def _is_hf_model_folder(path: Path) -> bool:
    return path.is_dir() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())


def resolve_image_cond_folder(pipeline_dir_or_config: str | Path | PipelineConfig, *,
                              models_dir: str | Path | None = None, offline: bool | None = None) -> Path:
    """The folder of the DINOv3 conditioner named by ``pipeline.json`` ``image_cond_model`` (see
    :func:`load_image_cond_model`); WeightsError saying where it looked and where to put it."""
    from ..models.dinov3 import DEFAULT_MODEL_NAME

    config = as_config(pipeline_dir_or_config)
    cls_name = config.image_cond_model_class or "DinoV3FeatureExtractor"
    if cls_name != "DinoV3FeatureExtractor":
        raise WeightsError(f"{config.root / PIPELINE_JSON}: image_cond_model {cls_name!r} is not supported "
                           "(only DinoV3FeatureExtractor)")
    name = config.image_cond_model or DEFAULT_MODEL_NAME
    return resolve_model_folder(
        name, base_dir=config.root, models_dir=models_dir, subfolders=("dinov3", "trellis2"),
        hub_files=("config.json", "model.safetensors"), offline=offline, is_complete=_is_hf_model_folder)


def load_image_cond_model(pipeline_dir_or_config: str | Path | PipelineConfig, *,
                          models_dir: str | Path | None = None, device: str | torch.device = "cpu",
                          offline: bool | None = None) -> nn.Module:
    """The DINOv3 conditioner named by ``pipeline.json`` ``image_cond_model`` (§3), float32, eval mode.

    The name is resolved against the pipeline folder first (the tiny golden pipeline ships ``dinov3-tiny/``), then
    as a path, then under ``models_dir`` (``<models_dir>/<name>``, ``<models_dir>/dinov3/<basename>``), then as a
    Hugging Face id (``config.json`` + ``model.safetensors``).
    """
    from ..models.dinov3 import DEFAULT_MODEL_NAME, KNOWN_CONFIGS, DinoV3FeatureExtractor

    config = as_config(pipeline_dir_or_config)
    folder = resolve_image_cond_folder(config, models_dir=models_dir, offline=offline)
    name = config.image_cond_model or DEFAULT_MODEL_NAME
    known = KNOWN_CONFIGS.get(name) or KNOWN_CONFIGS.get(f"facebook/{folder.name}")
    return DinoV3FeatureExtractor.from_folder(folder, config=known, device=device)


class ModelStore:
    """Pipeline models loaded lazily on first use, kept by key until released (no global state).

    ``vram_preset`` ('high', 'medium', 'low', 'auto'; see :mod:`.residency`) decides where the weights live
    between uses: under 'medium'/'low' models are loaded into host memory and the stage functions bring them to
    ``device`` only while they run.
    """

    def __init__(self, pipeline: str | Path | PipelineConfig, *, device: str | torch.device = "cpu",
                 dtype_override: torch.dtype | str | None = None, offline: bool | None = None,
                 loader: Callable[..., nn.Module] | None = None, vram_preset: str = "high") -> None:
        self.config = as_config(pipeline)
        self.device = device
        self.dtype_override = dtype_override
        self.offline = offline
        self._loader = loader or load_model
        self._models: dict[str, nn.Module] = {}
        self.residency = Residency(device, vram_preset)

    @property
    def vram_preset(self) -> str:
        """The resolved preset: 'high', 'medium' or 'low'."""
        return self.residency.preset

    def get(self, key: str) -> nn.Module:
        """Model ``key``, loading it now if needed."""
        model = self._models.get(key)
        if model is None:
            load_to = "cpu" if self.residency.offloads else self.device
            model = self._loader(self.config, key, device=load_to, dtype_override=self.dtype_override,
                                 offline=self.offline)
            self._models[key] = self.residency.add(key, model)
        return self._models[key]

    __call__ = get

    def adopt(self, key: str, model: nn.Module) -> nn.Module:
        """Manage a model loaded elsewhere (e.g. the DINOv3 conditioner) under this store's VRAM preset."""
        self._models[key] = self.residency.add(key, model)
        return self._models[key]

    def release(self, key: str) -> bool:
        """Forget model ``key`` (its memory is freed when no one else holds it); True if it was loaded."""
        self.residency.remove(key)
        return self._models.pop(key, None) is not None

    def release_all(self) -> None:
        """Forget every loaded model."""
        self.residency.clear()
        self._models.clear()

    @property
    def loaded(self) -> tuple[str, ...]:
        """Keys of the models currently loaded, in load order."""
        return tuple(self._models)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every model key the pipeline names."""
        return tuple(self.config.models)

    def __contains__(self, key: object) -> bool:
        return key in self._models

    def summary(self) -> Mapping[str, str]:
        """Loaded key -> 'N params, dtypes, device' (for logs and UIs)."""
        out = {}
        for key, model in self._models.items():
            params = list(model.parameters())
            dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
            devices = sorted({str(p.device) for p in params})
            out[key] = f"{sum(p.numel() for p in params)} params, {'/'.join(dtypes)}, {'/'.join(devices)}"
        return out
