"""Checks every argument of :func:`trellis2_core.api.image_to_glb` before anything is loaded (library and CLI).

:func:`check_arguments` is the one validation of a generation request: output path, pipeline source, sampling
options (:mod:`trellis2_core.params`), export settings, device, dtype, folders, background mode, VRAM preset and
the optional callables. ``names`` maps each argument to how the caller's user spells it, so the CLI reports
``--max-tokens`` where Python code reports ``max_num_tokens``. Image and mask files are read by :func:`load_image`
and :func:`load_mask` (EXIF orientation applied, as ComfyUI's loader does).

``export`` may be an :class:`~trellis2_core.postprocess.ExportConfig` or a mapping of its fields
(``{"texture_size": 1024}``); unknown keys are an :class:`~trellis2_core.errors.InputError` listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image, ImageOps

from .config import FastPathConfig
from .errors import BackendError, InputError
from .loading.residency import VRAM_PRESETS
from .params import check_bool, check_choice, check_device_name, check_dtype_name, check_faces, check_folder, \
    check_run_options
from .pipeline.pipeline import Pipeline, SamplerOverrides
from .postprocess import ExportConfig
from .postprocess.glb import check_output_path
from .preprocess.background import BACKGROUND_MODES, normalize_mode
from .preprocess.image import check_image_size

__all__ = ["CheckedArguments", "check_arguments", "export_config", "resolve_device", "load_image", "load_mask",
           "sampler_overrides"]

log = logging.getLogger(__name__)

_GUIDED_STAGES = ("sparse_structure", "shape_slat")  # the texture stage runs without CFG by default (§1.4)
_EXPORT_FIELDS = tuple(f.name for f in dataclasses.fields(ExportConfig))
# what a broken or hostile image file makes Pillow raise while decoding (besides its DecompressionBombError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, KeyError,
                  ZeroDivisionError, MemoryError)


@dataclass(frozen=True)
class CheckedArguments:
    """The arguments of one generation after :func:`check_arguments`: normalised, nothing loaded yet."""

    target: Path
    seed: int
    pipeline_type: str | None
    samplers: SamplerOverrides
    max_num_tokens: int
    export: ExportConfig
    device: torch.device
    dtype: str | None
    models_dir: Path | None
    offline: bool | None
    background: str
    vram_preset: str
    fast: FastPathConfig | None


def _label(names: Mapping[str, str], key: str) -> str:
    return names.get(key, key)


def resolve_device(device: str | torch.device | None, label: str = "device") -> torch.device:
    """``None``/'auto' → CUDA when available, else CPU; a device this machine lacks is a clear error.

    Raises:
        InputError: not a device name ('cpu', 'cuda', 'cuda:N', 'mps', 'auto').
        BackendError: CUDA/MPS not available, or no GPU with that index.
    """
    name = check_device_name(device, label)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = device if isinstance(device, torch.device) else torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"{label} {name!r}: this PyTorch ({torch.__version__}) sees no CUDA/ROCm GPU on this "
                               "machine; use 'cpu' or 'auto' (or install the CUDA build of PyTorch)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise BackendError(f"{label} {name!r}: this machine has {count} CUDA device(s) (cuda:0 .. "
                               f"cuda:{count - 1}); pick one of them, or 'cuda' / 'auto'")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BackendError(f"{label} {name!r}: Apple MPS is not available on this machine; use 'cpu' or 'auto'")
    return dev


def _upright(img: Image.Image, where: str) -> Image.Image:
    """A copy of the decoded ``img`` turned as its EXIF orientation says (phone photos), tag removed."""
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as err:  # a broken EXIF block: keep the pixels as stored
        log.warning("%s: EXIF orientation ignored (%s)", where, err)
        return img.copy()


def load_image(image: Image.Image | str | os.PathLike, what: str = "image") -> Image.Image:
    """A PIL image from itself or a file path (fully decoded, EXIF orientation applied); clear InputError if it
    cannot be read or has no pixels. PIL images are used as they are (their EXIF tag is not applied again)."""
    if isinstance(image, Image.Image):
        check_image_size(image, what)
        return image
    if not isinstance(image, (str, os.PathLike)) or not str(image).strip():
        raise InputError(f"{what} must be a PIL image or an image file path, got {type(image).__name__} "
                         f"{str(image)[:40]!r}")
    path = Path(image).expanduser()
    try:
        with Image.open(path) as img:
            img.load()
            loaded = _upright(img, f"{what} {path}")
    except FileNotFoundError as err:
        raise InputError(f"{what} file {str(path)!r} does not exist") from err
    except IsADirectoryError as err:
        raise InputError(f"{what} {str(path)!r} is a folder; pass an image file (PNG, JPEG, WebP, ...)") from err
    except PermissionError as err:
        raise InputError(f"cannot read {what} {str(path)!r}: permission denied") from err
    except Image.DecompressionBombError as err:
        raise InputError(f"{what} {str(path)!r} is too large to open safely ({err}); downscale it first") from err
    except _DECODE_ERRORS as err:
        raise InputError(f"cannot read {what} {str(path)!r} as an image ({type(err).__name__}: {err}); pass a PNG, "
                         "JPEG or WebP file") from err
    check_image_size(loaded, what)
    return loaded


def load_mask(mask: Any, what: str = "mask") -> Any:
    """A mask from a file path (alpha if the file has real transparency, else its luminance); others unchanged."""
    if mask is None or not isinstance(mask, (str, os.PathLike)):
        return mask
    img = normalize_mode(load_image(mask, what))
    if img.mode in ("LA", "RGBA") and img.getchannel("A").getextrema()[0] < 255:
        return img.getchannel("A")
    return img.convert("L")


def sampler_overrides(steps: int | None = None, guidance: float | None = None,
                      stages: Mapping[str, Mapping[str, Any]] | SamplerOverrides | None = None) -> SamplerOverrides:
    """Sampler overrides: ``steps`` for every stage, ``guidance`` for the guided ones (structure, shape),
    then per-stage dicts (keys 'sparse_structure', 'shape_slat', 'tex_slat') on top (values checked)."""
    checked = check_run_options(seed=0, steps=steps, guidance=guidance, samplers=stages, max_num_tokens=1,
                                pipeline_type=None)
    per: dict[str, dict[str, Any]] = {"sparse_structure": {}, "shape_slat": {}, "tex_slat": {}}
    if checked["steps"] is not None:
        for block in per.values():
            block["steps"] = checked["steps"]
    if checked["guidance"] is not None:
        for name in _GUIDED_STAGES:
            per[name]["guidance_strength"] = checked["guidance"]
    for name, values in checked["samplers"].items():
        per[name].update(values)
    return SamplerOverrides(**per)


def export_config(export: Any, names: Mapping[str, str] | None = None) -> ExportConfig:
    """An :class:`ExportConfig` from ``None`` (defaults), itself, or a mapping of its fields; each field's error
    names it as ``names['export.<field>']`` (default ``export['<field>']``)."""
    names = names or {}
    label = _label(names, "export")
    if export is None:
        return ExportConfig()
    if isinstance(export, ExportConfig):
        check_faces(export.target_faces, f"{label}.target_faces")
        return export
    if not isinstance(export, Mapping):
        raise InputError(f"{label} must be an ExportConfig or a dict of its fields ({', '.join(_EXPORT_FIELDS)}), "
                         f"got {type(export).__name__}")
    unknown = sorted(str(k) for k in export if k not in _EXPORT_FIELDS)
    if unknown:
        raise InputError(f"{label}: unknown export setting(s) {', '.join(unknown)}; valid: {', '.join(_EXPORT_FIELDS)}")
    for key, value in export.items():
        where = names.get(f"export.{key}", f"{label}[{key!r}]")
        if key == "target_faces":
            check_faces(value, where)
        try:
            ExportConfig(**{key: value})
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    return ExportConfig(**dict(export))


def check_arguments(output_path: Any, *, pipeline: Any, pipeline_type: Any = None, seed: Any = 42,
                    steps: Any = None, guidance: Any = None, samplers: Any = None, max_num_tokens: Any = 49152,
                    export: Any = None, device: Any = None, dtype: Any = None, models_dir: Any = None,
                    offline: Any = None, background: Any = "auto", matting_model: Any = None, progress: Any = None,
                    fast: Any = None, vram_preset: Any = "auto", names: Mapping[str, str] | None = None,
                    stage_names: Mapping[str, Mapping[str, str]] | None = None) -> CheckedArguments:
    """Check every argument of one generation (see :func:`trellis2_core.api.image_to_glb`) without loading
    anything; returns them normalised.

    Args:
        names: argument name → the label errors use (e.g. ``{"max_num_tokens": "--max-tokens"}``), also
            ``'export.<field>'`` for export fields; missing names label themselves.
        stage_names: ``{stage: {parameter: label}}`` for per-stage sampler values.

    Raises:
        InputError: a bad value, naming its label, the valid range and what to do.
        BackendError: the device does not exist on this machine.
    """
    names = dict(names or {})
    target = check_output_path(output_path)
    if not isinstance(pipeline, (str, os.PathLike, Pipeline)) or not str(pipeline).strip():
        raise InputError(f"{_label(names, 'pipeline')} must be a Hugging Face id, a pipeline folder or a loaded "
                         f"Pipeline, got {type(pipeline).__name__} {str(pipeline)[:40]!r}")
    run = check_run_options(seed=seed, steps=steps, guidance=guidance, samplers=samplers,
                            max_num_tokens=max_num_tokens, pipeline_type=pipeline_type, names=names,
                            stage_names=stage_names)
    overrides = sampler_overrides(run["steps"], run["guidance"], run["samplers"])
    cfg = export_config(export, names)
    background = check_choice(background, _label(names, "background"), BACKGROUND_MODES)
    vram_preset = check_choice(vram_preset, _label(names, "vram_preset"), VRAM_PRESETS)
    dtype_name = check_dtype_name(dtype, _label(names, "dtype"))
    folder = check_folder(models_dir, _label(names, "models_dir"))
    if offline is not None:
        offline = check_bool(offline, _label(names, "offline"))
    if fast is not None and not isinstance(fast, FastPathConfig):
        raise InputError(f"{_label(names, 'fast')} must be a FastPathConfig (or None for FastPathConfig.fast()), "
                         f"got {type(fast).__name__}")
    if progress is not None and not callable(getattr(progress, "step", None)):
        raise InputError(f"{_label(names, 'progress')} must have a step(stage, i, n) method, got "
                         f"{type(progress).__name__}")
    if matting_model is not None and not (isinstance(matting_model, (str, os.PathLike)) or callable(matting_model)):
        raise InputError(f"{_label(names, 'matting_model')} must be a folder, a Hugging Face id or a callable "
                         f"(RGB image -> mask), got {type(matting_model).__name__}")
    if isinstance(pipeline, Pipeline) and device is None:
        device = getattr(pipeline.models, "device", None)  # run the matting model beside the given pipeline
    dev = resolve_device(device, _label(names, "device"))
    return CheckedArguments(target=target, seed=run["seed"], pipeline_type=run["pipeline_type"], samplers=overrides,
                            max_num_tokens=run["max_num_tokens"], export=cfg, device=dev, dtype=dtype_name,
                            models_dir=folder, offline=offline, background=background, vram_preset=vram_preset,
                            fast=fast)
