"""One call from an image to a textured GLB (spec §1, §2, §8.2, §9): the library's main entry point.

``image_to_glb(image, "out.glb")``: background handling (§2) → DINOv3 conditioning → structure → shape →
material → decode (§1.1) → hole filling (§8.2, as the official ``decode_latent`` tail) → GLB export (§9, which
fills holes again first, as the official ``to_glb``). Latents are checked for NaN/Inf on their way into every model;
running out of memory becomes :class:`~trellis2_core.errors.OutOfMemoryError` naming the setting to lower.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from PIL import Image
from torch import Tensor, nn

from .cancel import cancel_on_forward, cancel_scope
from .config import FastPathConfig
from .errors import BackendError, InputError, OutOfMemoryError
from .mesh.types import Mesh, PbrVoxels
from .pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS, DEFAULT_SEED, Pipeline, PipelineResult, SamplerOverrides
from .pipeline.stages import PipelineType, StageHooks
from .postprocess import ExportConfig, ExportReport, export_glb, fill_holes
from .postprocess.glb import check_output_path
from .preprocess.background import (
    BiRefNetMatting, Matting, load_matting_model, needs_matting, normalize_mode, prepare_image, resolve_background,
)
from .sparse import SparseTensor

__all__ = ["image_to_glb", "ImageToGlbResult", "Progress", "DEFAULT_PIPELINE", "load_image", "load_mask",
           "resolve_device", "sampler_overrides"]

log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "microsoft/TRELLIS.2-4B"
_GUIDED_STAGES = ("sparse_structure", "shape_slat")  # the texture stage runs without CFG by default (§1.4)


class Progress(Protocol):
    """Receives ``step(stage, i, n)``: ``i == 0`` marks a stage start, ``i == n`` its end. Stages, in order:
    'load', 'background', 'condition', the sampler stages ('sparse_structure', 'shape' or 'shape_lr' and
    'shape_hr', 'tex'; one call per step), 'decode', then 'export:start' and 'export:<step>' (fill_holes … write,
    reported when done, ``n`` = number of export steps). An optional
    ``cancelled() -> bool`` method is polled between steps, between the blocks of every model forward and inside
    the export's long loops (at most every 10 ms; :mod:`trellis2_core.cancel`), so a cancel takes effect within
    about a second in every stage and leaves no output file."""

    def step(self, stage: str, i: int, n: int) -> None: ...


@dataclass(frozen=True)
class ImageToGlbResult:
    """What :func:`image_to_glb` produced."""

    path: Path
    export: ExportReport
    pipeline: PipelineResult
    image: Image.Image  # the conditioning image after background handling (§2)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, background, generate, export


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/'auto' → CUDA when available, else CPU; an unavailable CUDA device is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"invalid device {device!r} ({err}); use 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BackendError(f"device {device!r} requested but Apple MPS is not available; use device='cpu'")
    return dev


def load_image(image: Image.Image | str | os.PathLike, what: str = "image") -> Image.Image:
    """A PIL image from itself or a file path (fully decoded; clear InputError if unreadable)."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")
    path = Path(image).expanduser()
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError as err:
        raise InputError(f"{what} file {str(path)!r} does not exist") from err
    except Image.DecompressionBombError as err:
        raise InputError(f"{what} {str(path)!r} is too large to open safely ({err})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot read {what} {str(path)!r}: {err}") from err


def load_mask(mask: Any) -> Any:
    """A mask from a file path (alpha if the file has real transparency, else its luminance); others unchanged."""
    if not isinstance(mask, (str, os.PathLike)):
        return mask
    img = normalize_mode(load_image(mask, "mask"))
    if img.mode in ("LA", "RGBA") and img.getchannel("A").getextrema()[0] < 255:
        return img.getchannel("A")
    return img.convert("L")


def sampler_overrides(steps: int | None = None, guidance: float | None = None,
                      stages: Mapping[str, Mapping[str, Any]] | SamplerOverrides | None = None) -> SamplerOverrides:
    """Sampler overrides: ``steps`` for every stage, ``guidance`` for the guided ones (structure, shape),
    then per-stage dicts (keys 'sparse_structure', 'shape_slat', 'tex_slat') on top."""
    per: dict[str, dict[str, Any]] = {"sparse_structure": {}, "shape_slat": {}, "tex_slat": {}}
    if steps is not None:
        for block in per.values():
            block["steps"] = steps
    if guidance is not None:
        for name in _GUIDED_STAGES:
            per[name]["guidance_strength"] = guidance
    if isinstance(stages, SamplerOverrides):
        stages = {"sparse_structure": stages.sparse_structure, "shape_slat": stages.shape_slat,
                  "tex_slat": stages.tex_slat}
    for name, values in (stages or {}).items():
        if name not in per:
            raise InputError(f"unknown sampler stage {name!r}; use sparse_structure, shape_slat or tex_slat")
        per[name].update(values)
    return SamplerOverrides(**per)


# ---------------------------------------------------------------------------------------------- NaN guard
def _non_finite(value: Any) -> bool:
    t = value.feats if isinstance(value, SparseTensor) else value
    return isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())


class _FiniteModels:
    """A model getter that checks every latent entering a model (and a decoder's ``from_latent``) for NaN/Inf."""

    def __init__(self, getter: Callable[[str], nn.Module], stage: Callable[[], str]) -> None:
        self._get, self._stage = getter, stage
        self.device = getattr(getter, "device", "cpu")
        self._handles: list[Any] = []
        self._seen: set[int] = set()

    def _hook(self, key: str) -> Callable[..., None]:
        def check(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if any(_non_finite(a) for a in (*args, *kwargs.values())):
                raise InputError(
                    f"NaN/Inf values in the latent entering {key} (during stage {self._stage()!r}). Usual causes: "
                    "float16 overflow (use dtype bfloat16 or float32), corrupt weights, or a corrupt input latent; "
                    "another seed may also avoid it")
        return check

    def __call__(self, key: str) -> nn.Module:
        model = self._get(key)
        if id(model) not in self._seen:
            self._seen.add(id(model))
            self._handles.append(model.register_forward_pre_hook(self._hook(key), with_kwargs=True))
            inner = getattr(model, "from_latent", None)  # decoders' decode()/upsample() bypass forward()
            if isinstance(inner, nn.Module):
                self._handles.append(inner.register_forward_pre_hook(self._hook(key), with_kwargs=True))
        return model

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()


def _check_outputs(result: PipelineResult) -> tuple[Mesh, PbrVoxels]:
    """Final latents and decoded outputs must be finite and non-empty."""
    for what, value in (("sparse-structure latent", result.structure.latent), ("shape latent", result.shape.slat),
                        ("material latent", result.material.slat)):
        if _non_finite(value):
            raise InputError(f"the {what} contains NaN/Inf values; use dtype bfloat16/float32 or another seed")
    decoded = result.decoded
    if not decoded.meshes or not decoded.pbr:
        raise InputError("decoding produced no mesh or no PBR voxels")
    mesh, pbr = decoded.meshes[0], decoded.pbr[0]
    if mesh.num_faces == 0:
        raise InputError("the decoded mesh has no faces (the shape latent decodes to nothing); try another seed "
                         "or image")
    if _non_finite(mesh.vertices) or _non_finite(pbr.attrs):
        raise InputError("the decoded mesh or PBR voxels contain NaN/Inf values; use dtype bfloat16/float32")
    return mesh, pbr


# ---------------------------------------------------------------------------------------------- OOM
def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _oom_hint(stage: str, ptype: str, max_tokens: int, cfg: ExportConfig) -> str:
    if stage.startswith("export") or stage == "fill_holes":
        return (f"lower the texture size (texture_size / --texture-size, now {cfg.texture_size}) or the face count "
                f"(target_faces / --faces, now {cfg.target_faces})")
    if stage == "background":
        return "pass a mask or an RGBA image (no matting model), or run background removal on the CPU"
    if stage == "load":
        return "load the models in a smaller dtype (dtype='bfloat16' / --dtype bfloat16) or use a bigger device"
    return (f"use the VRAM preset 'low' (vram_preset / --vram low), a smaller pipeline type (pipeline_type / "
            f"--type, now {ptype!r}: try '1024_cascade' or '512') or fewer tokens (max_num_tokens / --max-tokens, "
            f"now {max_tokens}, cascades only)")


# ---------------------------------------------------------------------------------------------- main entry
class _Tracker:
    """Forwards progress, remembers the current stage, announces 'decode' when the last material step ends."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.stage = progress, "load"

    def __call__(self, stage: str, i: int, n: int) -> None:
        self.stage = stage
        if self.progress is not None:
            self.progress.step(stage, i, n)
        if stage == "tex" and i == n:
            self("decode", 0, 1)

    def step(self, stage: str, i: int, n: int) -> None:  # ExportProgress for export_glb
        self(f"export:{stage}", i, n)

    def cancelled(self) -> bool:
        poll = getattr(self.progress, "cancelled", None)
        return bool(poll()) if poll is not None else False


def image_to_glb(
    image: Image.Image | str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pipeline: str | os.PathLike | Pipeline = DEFAULT_PIPELINE,
    pipeline_type: str | None = None,
    seed: int = DEFAULT_SEED,
    steps: int | None = None,
    guidance: float | None = None,
    samplers: Mapping[str, Mapping[str, Any]] | SamplerOverrides | None = None,
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
    export: ExportConfig | None = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    models_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    background: str = "auto",
    mask: Any = None,
    matting_model: str | os.PathLike | Matting | None = None,
    progress: Progress | None = None,
    fast: FastPathConfig | None = None,
    vram_preset: str = "auto",
) -> ImageToGlbResult:
    """Generate a textured GLB from one image and write it to ``output_path``.

    Args:
        image: PIL image or image file path.
        pipeline: a Hugging Face id, a local pipeline folder, a ``<models_dir>/trellis2/<name>`` name, or a loaded
            :class:`Pipeline` (reused as it is; ``device``/``dtype`` then do not apply to it).
        pipeline_type: '512', '1024', '1024_cascade', '1536_cascade' (default: pipeline.json's).
        steps, guidance: sampler overrides for every stage / the guided stages; ``samplers`` per stage on top.
        export: GLB settings (faces, texture size/format, alpha mode …).
        device: 'cpu', 'cuda', 'cuda:N', 'mps' or None/'auto'.
        dtype: None (the checkpoints' own policy), 'float32', 'bfloat16' or 'float16'.
        background: 'auto', 'keep', 'mask', 'model' or 'none' (see ``preprocess.background``); ``mask`` is a
            mask image/array or a path; ``matting_model`` a folder/HF id or any ``RGB image -> mask`` callable.
        progress: see :class:`Progress`.
        fast: fast-path switches (default ``FastPathConfig.fast()``: exact up to rounding; the CUDA-only parts are
            ignored elsewhere); ``FastPathConfig()`` is the plain eager path.
        vram_preset: 'auto', 'high', 'medium' or 'low' (``loading.residency``): how much of the model weights stay
            on the device between uses. Applies when ``pipeline`` is not a loaded :class:`Pipeline`.

    Raises:
        InputError: bad inputs, unwritable output path (checked first), empty foreground, NaN latents.
        WeightsError: missing or broken weights (the message says where to put them).
        OutOfMemoryError: the device ran out of memory (the message names the setting to lower).
        CancelledError: ``progress.cancelled()`` turned true.
    """
    target = check_output_path(output_path)
    cfg = export or ExportConfig()
    overrides = sampler_overrides(steps, guidance, samplers)
    if pipeline_type is not None:
        PipelineType.parse(pipeline_type)  # fail early on a typo
    img = load_image(image)
    mask_img = load_mask(mask)
    resolve_background(img, background, mask_img)
    if device is None and isinstance(pipeline, Pipeline):
        device = getattr(pipeline.models, "device", None)  # run the matting model beside the given pipeline
    dev = resolve_device(device)
    track = _Tracker(progress)
    ptype = pipeline_type
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    try:
        track("load", 0, 1)
        pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.from_pretrained(
            pipeline, models_dir=models_dir, device=dev, dtype_override=dtype, offline=offline,
            vram_preset=vram_preset)
        matting: Matting | None = None
        if isinstance(matting_model, nn.Module):  # a bare BiRefNet-interface network
            matting = BiRefNetMatting(matting_model)
        elif callable(matting_model):
            matting = matting_model
        if matting is None and needs_matting(img, background, mask_img):
            matting = load_matting_model(matting_model, device=dev, models_dir=models_dir, offline=offline)
        track("load", 1, 1)
        timings["load"] = time.perf_counter() - clock

        clock = time.perf_counter()
        track("background", 0, 1)
        with cancel_on_forward(matting, where="background removal", poll=track.cancelled):
            cond_image = prepare_image(img, background=background, mask=mask_img, matting=matting)
        track("background", 1, 1)
        timings["background"] = time.perf_counter() - clock

        clock = time.perf_counter()
        ptype = ptype or pipe.config.default_pipeline_type
        track("condition", 0, 1)
        with cancel_scope(track.cancelled):  # DINOv3 polls between its blocks
            cond = pipe.condition(cond_image, ptype)
        track("condition", 1, 1)
        guarded = _FiniteModels(pipe.models, lambda: track.stage)
        try:
            runner = Pipeline(pipe.config, guarded, image_cond_model=pipe.image_cond_model,
                              models_dir=pipe.models_dir)
            hooks = StageHooks(progress=track, should_cancel=track.cancelled)
            result = runner.run_from_conditioning(cond, seed=seed, pipeline_type=ptype, samplers=overrides,
                                                  max_num_tokens=max_num_tokens, hooks=hooks,
                                                  fast=FastPathConfig.fast() if fast is None else fast)
        finally:
            guarded.close()
        mesh, pbr = _check_outputs(result)
        track("decode", 1, 1)
        timings["generate"] = time.perf_counter() - clock

        clock = time.perf_counter()
        track("export:start", 0, 1)
        with cancel_scope(track.cancelled):
            mesh = fill_holes(mesh)  # §8.2: decode_latent's hole filling (export fills again, §13 item 26)
            report = export_glb(mesh, pbr, target, cfg, track)
        timings["export"] = time.perf_counter() - clock
    except (RuntimeError, MemoryError) as err:
        if not _is_oom(err):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(
            f"out of memory on {dev} during stage {track.stage!r}: "
            f"{_oom_hint(track.stage, str(ptype or 'default'), max_num_tokens, cfg)}") from err
    log.info("image_to_glb: %s (%d faces) in %.1f s", report.path, report.faces, sum(timings.values()))
    return ImageToGlbResult(path=Path(report.path), export=report, pipeline=result, image=cond_image,
                            timings=timings)
