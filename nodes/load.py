"""Load TRELLIS.2 model node: pipeline folder / local path / Hugging Face id → ``TRELLIS2_PIPELINE`` (spec §4.1)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from trellis2_core.arguments import resolve_device
from trellis2_core.config import ATTENTION_CHOICES, SPEEDS, FastPathConfig
from trellis2_core.errors import BackendError, InputError, WeightsError
from trellis2_core.loading import PIPELINE_JSON, resolve_pipeline_dir
from trellis2_core.loading.comfy_pipeline import is_comfy_source, list_comfy_sources
from trellis2_core.pipeline.pipeline import Pipeline

from . import comfy_bridge as bridge
from .checks import check_widgets, widget_label
from .runtime import VRAM_PRESETS, PipelineHandle, resolve_preset
from .types import CATEGORY, PIPELINE

__all__ = ["Trellis2LoadModel", "DEFAULT_SOURCE", "list_sources"]

DEFAULT_SOURCE = "microsoft/TRELLIS.2-4B"
PRECISIONS = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cuda", "cpu", "mps")
ATTENTION = ATTENTION_CHOICES  # attention_backend: "auto" keeps the speed preset's own choice


DEMO_SOURCE = "demo"  # tiny RANDOM weights made on first use: tries a graph end to end with no download


def list_sources() -> list[str]:
    """The official Hub id, every folder with a ``pipeline.json`` under ``models/trellis2``, every set of ComfyUI
    core's TRELLIS.2 files (``comfy:<bundle>``, from models/diffusion_models, vae, clip_vision), then ``demo``."""
    names = [DEFAULT_SOURCE]
    for folder in bridge.trellis2_dirs():
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if (sub / PIPELINE_JSON).is_file() and sub.name not in names:
                names.append(sub.name)
    names += [n for n in list_comfy_sources(folders=bridge.comfy_model_folders()) if n not in names]
    if DEMO_SOURCE not in names:
        names.append(DEMO_SOURCE)
    return names


def _device(choice: str) -> torch.device:
    """'auto' = ComfyUI's device (honours --cpu / --cuda-device); every choice checked by the library's resolver."""
    return resolve_device(bridge.torch_device() if choice == "auto" else choice,
                          widget_label(Trellis2LoadModel, "device"))


def _one_copy_of_hub_logs() -> None:
    """huggingface_hub prints its warnings (e.g. download retries) with its own StreamHandler *and* passes them on
    to the root logger, where ComfyUI prints and records them again: drop its handler so ComfyUI's console and log
    show each line once. Only when the root logger has handlers (it always has inside ComfyUI)."""
    if not logging.getLogger().handlers:
        return
    from trellis2_core.optional import require

    try:
        require("huggingface_hub", "Hugging Face downloads")  # importing it is what attaches its handler
    except BackendError:  # missing or broken: the loader says so if a download is needed
        return
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler and hub_logger.propagate:
            hub_logger.removeHandler(handler)


def _dtype(precision: str, device: torch.device) -> str | None:
    """``auto``: the checkpoints' own precision on a GPU, float32 on the CPU (no fast bf16/fp16 there)."""
    if precision == "auto":
        return "float32" if device.type == "cpu" else None
    return precision


class Trellis2LoadModel:
    """Find a TRELLIS.2 pipeline and prepare it; the models themselves load lazily, stage by stage."""

    DESCRIPTION = ("Finds a TRELLIS.2 pipeline (pipeline.json + ckpts/) and sets up lazy, per-stage model loading. "
                   "Put pipeline folders in ComfyUI/models/trellis2/<name>; Hub ids download on first use.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The TRELLIS.2 pipeline: connect it to Encode Image, the samplers and Decode Mesh.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": (list_sources(), {
                    "default": DEFAULT_SOURCE,
                    "tooltip": "Pipeline folder under ComfyUI/models/trellis2/, ComfyUI core's own TRELLIS.2 files "
                               "(comfy:<file>: the diffusion bundle in models/diffusion_models with the shape and "
                               "texture VAEs in models/vae and DINOv3 in models/clip_vision; type '512' is not "
                               "available with them), or the Hugging Face id. For "
                               "'microsoft/TRELLIS.2-4B' a folder models/trellis2/TRELLIS.2-4B is used when present "
                               "(offline); otherwise the files download into the Hugging Face cache. 'demo' = tiny RANDOM "
                               "weights in the official layout, made on first use without a download: it tests a "
                               "graph end to end in seconds, but the shapes it makes are meaningless."}),
                "precision": (list(PRECISIONS), {
                    "default": "auto",
                    "tooltip": "Weight/compute precision of the transformers and decoders. auto = the checkpoints' "
                               "own (bfloat16/float16) on a GPU, float32 on the CPU."}),
                "attention_backend": (list(ATTENTION), {
                    "default": "auto",
                    "tooltip": "Attention kernel on NVIDIA GPUs (the CPU always uses PyTorch's). auto = the speed "
                               "setting's choice: with speed 'fast', FlashAttention-4 for the long 1024/1536 "
                               "sequences when installed (install.py --fa4; Hopper or newer), cuDNN otherwise. "
                               "cudnn / fa4 / flash (FlashAttention-2, as the official code) / triton (this pack's "
                               "kernel) force one; all give the same results up to rounding."}),
                "vram_preset": (list(VRAM_PRESETS), {
                    "default": "auto",
                    "tooltip": "GPU memory use. high: all models stay on the GPU (fastest, ~16 GB at 1024, ~21 GB "
                               "at 1536). medium: only the running stage's model, the next one prefetched from RAM "
                               "(≤ 8 GB at 1024, ~3 % slower). low: blocks streamed from RAM (≤ 4 GB at 1024, ~7 % "
                               "slower). medium/low keep the weights in RAM (~16 GB) and make ComfyUI unload its own "
                               "models first. auto picks by GPU memory."}),
                "device": (list(DEVICES), {
                    "default": "auto",
                    "tooltip": "Where the models run. auto = ComfyUI's device (honours --cpu / --cuda-device)."}),
            },
            "optional": {
                "custom_source": ("STRING", {
                    "default": "",
                    "tooltip": "Overrides 'source' when not empty: a folder path holding pipeline.json, a folder "
                               "name under models/trellis2, or a Hugging Face id (owner/name)."}),
                "speed": (list(SPEEDS), {
                    "default": "fast",
                    "tooltip": "fast: cached cross-attention keys/values, batched guidance passes, compiled "
                               "transformer blocks, fused kernels and the fastest attention installed (same results "
                               "up to rounding). Compiling costs the first generation after each start: +14 s on an "
                               "H200 (PyTorch's compile cache on disk), +36 s the very first time; later ones are "
                               "~5-10 % faster than fast_no_compile. fast_no_compile: the same without compiling (+5 s "
                               "after a start, +17 s the very first time): best when you restart often or make only a "
                               "few assets per session. eager: the plain "
                               "op-by-op path, like the official code (~1.5x slower sampling)."}),
            },
        }

    def load(self, source: str, precision: str, attention_backend: str, vram_preset: str, device: str,
             custom_source: str = "", speed: str = "fast") -> tuple[PipelineHandle]:
        node = type(self)
        # 'source' lists the folders found when the menu was built: any name or path is accepted here
        check_widgets(node, {"precision": precision, "attention_backend": attention_backend,
                             "vram_preset": vram_preset, "device": device, "custom_source": custom_source,
                             "speed": speed}, skip=("source",))
        if not isinstance(source, str) or not (source.strip() or (custom_source or "").strip()):
            raise InputError(f"{widget_label(node, 'source')} must name a pipeline (a folder under "
                             f"models/trellis2, a path or a Hugging Face id), got {source!r}")
        fast = FastPathConfig.for_speed(speed).with_attention(attention_backend)  # checked before any download or weight loading
        _one_copy_of_hub_logs()
        src = (custom_source or "").strip() or source.strip()
        dev = _device(device)
        models = bridge.models_dir()
        preset = resolve_preset(vram_preset, dev)
        if is_comfy_source(src):  # ComfyUI core's own files: found in its diffusion_models, vae, clip_vision
            pipeline = Pipeline.from_pretrained(src, models_dir=models, comfy_folders=bridge.comfy_model_folders(),
                                                device=dev, dtype_override=_dtype(precision, dev), vram_preset=preset)
            root = pipeline.comfy_files.files.bundle.path.parent
        else:
            try:
                root = _resolve(src, models)
            except WeightsError as err:
                raise WeightsError(f"{err} (ComfyUI model folders searched: "
                                   f"{', '.join(str(d) for d in bridge.trellis2_dirs())})") from err
            pipeline = Pipeline.from_pretrained(root, models_dir=models, device=dev,
                                                dtype_override=_dtype(precision, dev), vram_preset=preset)
        handle = PipelineHandle(pipeline=pipeline, source=src, root=root, device=dev, vram_preset=preset, fast=fast)
        return (handle,)


def _resolve(source: str, models: Path) -> Path:
    """``source`` as a folder, as a name in any ComfyUI trellis2 folder (extra_model_paths too), or a Hub id."""
    for folder in bridge.trellis2_dirs():
        for cand in (folder / source, folder / source.rstrip("/").split("/")[-1]):
            if (cand / PIPELINE_JSON).is_file():
                return cand
    return resolve_pipeline_dir(source, models_dir=models)
