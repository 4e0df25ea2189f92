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

from .arguments import check_arguments, load_image, load_mask, resolve_device, sampler_overrides
from .cancel import cancel_on_forward, cancel_scope
from .config import FastPathConfig
from .errors import InputError, OutOfMemoryError, is_out_of_memory
from .mesh.types import Mesh, PbrVoxels
from .optional import check_installed
from .pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS, DEFAULT_SEED, Pipeline, PipelineResult, SamplerOverrides
from .pipeline.stages import Decoded, StageHooks
from .postprocess import ExportConfig, ExportReport, GeometryJob, export_glb, fill_holes, start_geometry
from .postprocess.decimate import start_decimation_worker
from .preprocess.background import BiRefNetMatting, Matting, load_matting_model, prepare_image, resolve_background
from .preprocess.image import MIN_FOREGROUND_SIDE, check_image_size
from .sparse import SparseTensor

__all__ = ["image_to_glb", "ImageToGlbResult", "Progress", "DEFAULT_PIPELINE", "load_image", "load_mask",
           "resolve_device", "sampler_overrides"]

log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "microsoft/TRELLIS.2-4B"


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


def _checked_mesh(decoded: Decoded) -> Mesh:
    """The decoded mesh, which must exist, have faces and be finite."""
    if not decoded.meshes:
        raise InputError("decoding produced no mesh")
    mesh = decoded.meshes[0]
    if mesh.num_faces == 0:
        raise InputError("the decoded mesh has no faces (the shape latent decodes to nothing); try another seed "
                         "or image")
    if _non_finite(mesh.vertices):
        raise InputError("the decoded mesh contains NaN/Inf values; use dtype bfloat16/float32")
    return mesh


def _checked_latents_and_pbr(result: PipelineResult) -> PbrVoxels:
    """Final latents and the PBR voxels must be finite and non-empty (the mesh was checked when it was decoded:
    :func:`_checked_mesh`)."""
    for what, value in (("sparse-structure latent", result.structure.latent), ("shape latent", result.shape.slat),
                        ("material latent", result.material.slat)):
        if _non_finite(value):
            raise InputError(f"the {what} contains NaN/Inf values; use dtype bfloat16/float32 or another seed")
    if not result.decoded.pbr:
        raise InputError("decoding produced no PBR voxels")
    pbr = result.decoded.pbr[0]
    if _non_finite(pbr.attrs):
        raise InputError("the decoded PBR voxels contain NaN/Inf values; use dtype bfloat16/float32")
    return pbr


# ---------------------------------------------------------------------------------------------- OOM
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


def _check_packages(pipeline: Any, cfg: ExportConfig) -> None:
    """BackendError now (not after the sampling) when a package the run will import is missing or broken."""
    if not (isinstance(pipeline, Pipeline) and pipeline.image_cond_model_loaded):
        check_installed(("transformers",), "DINOv3 conditioning")
    check_installed(("trimesh",) + (("fast_simplification",) if cfg.target_faces else ()), "GLB export")


# ---------------------------------------------------------------------------------------------- main entry
class _EarlyGeometry:
    """``on_shape_decoded`` of :meth:`Pipeline.run_from_conditioning`: checks the decoded mesh, fills its holes
    (§8.2) and starts the export's geometry (:func:`start_geometry`), so the decimation runs on the CPU while the
    GPU samples the material; :func:`export_glb` then takes ``job``."""

    def __init__(self, cfg: ExportConfig, poll: Callable[[], bool]) -> None:
        self.cfg, self.poll = cfg, poll
        self.mesh: Mesh | None = None
        self.job: GeometryJob | None = None

    def __call__(self, shapes: Decoded) -> None:
        mesh = _checked_mesh(shapes)
        with cancel_scope(self.poll):
            # §8.2: decode_latent's hole filling (export fills again, §13 item 26)
            self.mesh = fill_holes(mesh)
            self.job = start_geometry(self.mesh, self.cfg, shapes.res)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None


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
    export: ExportConfig | Mapping[str, Any] | None = None,
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
        pipeline_type: '512', '1024', '1024_cascade', '1536_cascade' (or N_cascade, N = 1024 + k·128 up to 2048;
            default: pipeline.json's).
        seed: 0 .. 2**64 - 1.
        steps, guidance: sampler overrides for every stage / the guided stages; ``samplers`` per stage on top
            (``{'shape_slat': {'steps': 20}}``; ranges in :mod:`trellis2_core.params`).
        max_num_tokens: 1 .. 1 000 000, the token cap of the 1536/2048 cascades.
        export: GLB settings: an :class:`ExportConfig`, or a dict of its fields (``{'texture_size': 1024}``).
        device: 'cpu', 'cuda', 'cuda:N', 'mps' or None/'auto'.
        dtype: None (the checkpoints' own policy), 'float32', 'bfloat16' or 'float16'.
        background: 'auto', 'keep', 'mask', 'model' or 'none' (see ``preprocess.background``); ``mask`` is a
            mask image/array or a path; ``matting_model`` a folder/HF id or any ``RGB image -> mask`` callable.
        progress: see :class:`Progress`.
        fast: fast-path switches (default ``FastPathConfig.fast()``: exact up to rounding; the CUDA-only parts are
            ignored elsewhere); ``FastPathConfig()`` is the plain eager path.
        vram_preset: 'auto', 'high', 'medium' or 'low' (``loading.residency``): how much of the model weights stay
            on the device between uses. Applies when ``pipeline`` is not a loaded :class:`Pipeline`.

    Every argument, the image (and mask) and, for an image that needs no matting model, the foreground are
    checked before anything is loaded; then the pipeline's checkpoint files and sampler settings are checked
    before its first model loads (:meth:`Pipeline.check_ready`).

    Raises:
        InputError: bad inputs, unwritable output path (checked first), empty or too small foreground, NaN
            latents. The message names the argument.
        WeightsError: missing or broken weights (the message says where to put them).
        BackendError: the device does not exist here, or a needed package is missing or broken.
        OutOfMemoryError: the device ran out of memory (the message names the setting to lower).
        CancelledError: ``progress.cancelled()`` turned true.
    """
    args = check_arguments(output_path, pipeline=pipeline, pipeline_type=pipeline_type, seed=seed, steps=steps,
                           guidance=guidance, samplers=samplers, max_num_tokens=max_num_tokens, export=export,
                           device=device, dtype=dtype, models_dir=models_dir, offline=offline, background=background,
                           matting_model=matting_model, progress=progress, fast=fast, vram_preset=vram_preset)
    cfg, dev, ptype = args.export, args.device, args.pipeline_type
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    img = load_image(image)
    mask_img = load_mask(mask)
    check_image_size(img)
    if max(img.size) < MIN_FOREGROUND_SIDE:  # no matte can find an object worth conditioning on in it
        raise InputError(f"foreground too small: {max(img.size)} px (the image is {img.width}x{img.height} px; an "
                         f"object needs at least {MIN_FOREGROUND_SIDE} px); pass a bigger picture of the object")
    mode = resolve_background(img, args.background, mask_img)
    cond_image = None if mode == "model" else prepare_image(img, background=args.background, mask=mask_img)
    timings["background"] = time.perf_counter() - clock  # the matting model's time is added below
    _check_packages(pipeline, cfg)
    if cfg.target_faces:
        start_decimation_worker()  # the child imports its library while the models sample (a no-op if it runs)
    track = _Tracker(progress)
    clock = time.perf_counter()
    try:
        track("load", 0, 1)
        pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.from_pretrained(
            pipeline, models_dir=args.models_dir, device=dev, dtype_override=args.dtype, offline=args.offline,
            vram_preset=args.vram_preset)
        run_type = pipe.check_ready(ptype, args.samplers)  # sampler settings and checkpoint files, nothing loaded
        matting: Matting | None = None
        if cond_image is None:
            if isinstance(matting_model, nn.Module):  # a bare BiRefNet-interface network
                matting = BiRefNetMatting(matting_model)
            elif callable(matting_model):
                matting = matting_model
            else:
                matting = load_matting_model(matting_model, device=dev, models_dir=args.models_dir,
                                             offline=args.offline)
        track("load", 1, 1)
        timings["load"] = time.perf_counter() - clock

        clock = time.perf_counter()
        track("background", 0, 1)
        if cond_image is None:
            with cancel_on_forward(matting, where="background removal", poll=track.cancelled):
                cond_image = prepare_image(img, background=args.background, mask=mask_img, matting=matting)
        track("background", 1, 1)
        timings["background"] += time.perf_counter() - clock

        clock = time.perf_counter()
        ptype = run_type.name
        track("condition", 0, 1)
        with cancel_scope(track.cancelled):  # DINOv3 polls between its blocks
            cond = pipe.condition(cond_image, run_type)
        track("condition", 1, 1)
        guarded = _FiniteModels(pipe.models, lambda: track.stage)
        early = _EarlyGeometry(cfg, track.cancelled)
        try:
            runner = Pipeline(pipe.config, guarded, image_cond_model=pipe.image_cond_model,
                              models_dir=pipe.models_dir)
            hooks = StageHooks(progress=track, should_cancel=track.cancelled)
            result = runner.run_from_conditioning(cond, seed=args.seed, pipeline_type=run_type,
                                                  samplers=args.samplers, max_num_tokens=args.max_num_tokens,
                                                  hooks=hooks, fast=FastPathConfig.fast() if fast is None else fast,
                                                  on_shape_decoded=early)
            pbr = _checked_latents_and_pbr(result)
            track("decode", 1, 1)
            timings["generate"] = time.perf_counter() - clock

            clock = time.perf_counter()
            track("export:start", 0, 1)
            assert early.mesh is not None  # run_from_conditioning called it
            with cancel_scope(track.cancelled):
                report = export_glb(early.mesh, pbr, args.target, cfg, track, geometry=early.job)
            early.job = None
            timings["export"] = time.perf_counter() - clock
        finally:
            guarded.close()
            early.cancel()
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(
            f"out of memory on {dev} during stage {track.stage!r}: "
            f"{_oom_hint(track.stage, str(ptype or 'default'), args.max_num_tokens, cfg)}") from err
    log.info("image_to_glb: %s (%d faces) in %.1f s", report.path, report.faces, sum(timings.values()))
    return ImageToGlbResult(path=Path(report.path), export=report, pipeline=result, image=cond_image,
                            timings=timings)
