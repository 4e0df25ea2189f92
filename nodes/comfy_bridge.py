"""The one place that imports ComfyUI (style §2): progress, interrupts, memory, model folders, output folder, MESH.

Every function works without ComfyUI too, with plain fallbacks (a tqdm bar, no interrupt, a local models folder,
``./output``), so the nodes can be imported and exercised by the CPU test-suite. ComfyUI modules are imported
inside the functions, when first needed, never at import time of this module.
"""
from __future__ import annotations

import importlib
import logging
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

from trellis2_core.errors import CancelledError

log = logging.getLogger(__name__)

__all__ = [
    "MODELS_FOLDER", "comfy_module", "have_comfy", "progress_bar", "interrupted", "raise_interrupted",
    "models_dir", "trellis2_dirs", "register_model_folder", "output_dir", "input_dir", "torch_device", "total_memory",
    "free_memory", "empty_cache", "core_mesh", "PlainMesh", "ensure_module_mime_type", "on_pack_load",
]

MODELS_FOLDER = "trellis2"  # ComfyUI/models/trellis2/<pipeline folder>
_ENV_MODELS = "TRELLIS2_MODELS_DIR"  # fallback models dir outside ComfyUI
_ENV_OUTPUT = "TRELLIS2_OUTPUT_DIR"  # fallback output dir outside ComfyUI
_ENV_INPUT = "TRELLIS2_INPUT_DIR"  # fallback input dir outside ComfyUI


def comfy_module(name: str) -> ModuleType | None:
    """ComfyUI module ``name`` (e.g. ``'comfy.utils'``) if ComfyUI is running this process, else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def have_comfy() -> bool:
    """True inside a ComfyUI process (its ``folder_paths`` and ``comfy.model_management`` import)."""
    return comfy_module("folder_paths") is not None and comfy_module("comfy.model_management") is not None


# ---------------------------------------------------------------------------------------------------- progress
class _TqdmBar:
    """Fallback progress bar with ComfyUI's ``ProgressBar`` interface (tqdm hides itself off a terminal)."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.total = int(total)
        self.current = 0
        self._bar = tqdm(total=self.total, disable=None, leave=False)

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None and total != self.total:
            self.total = int(total)
            self._bar.total = self.total
        value = min(int(value), self.total)
        self._bar.update(value - self.current)
        self.current = value

    def update(self, value: int) -> None:
        self.update_absolute(self.current + int(value))


def progress_bar(total: int) -> Any:
    """ComfyUI's ``comfy.utils.ProgressBar(total)`` (drives the node's bar and the ws ``progress`` messages)."""
    utils = comfy_module("comfy.utils") if have_comfy() else None
    if utils is not None and hasattr(utils, "ProgressBar"):
        return utils.ProgressBar(max(int(total), 1))
    return _TqdmBar(max(int(total), 1))


# ---------------------------------------------------------------------------------------------------- interrupts
def interrupted() -> bool:
    """True after the user pressed Cancel (``POST /interrupt``); never clears the flag. False outside ComfyUI."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    return bool(mm is not None and mm.processing_interrupted())


def raise_interrupted(err: CancelledError) -> None:
    """Re-raise a library cancellation as ComfyUI's ``InterruptProcessingException`` (shown as "interrupted")."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()  # clears the flag and raises when it is set
        raise mm.InterruptProcessingException() from err
    raise err


# ---------------------------------------------------------------------------------------------------- folders
def models_dir() -> Path:
    """ComfyUI's ``models/`` folder; outside ComfyUI ``$TRELLIS2_MODELS_DIR`` or ``./models``."""
    fp = comfy_module("folder_paths") if have_comfy() else None
    if fp is not None:
        return Path(fp.models_dir)
    return Path(os.environ.get(_ENV_MODELS) or "models").expanduser()


def register_model_folder() -> None:
    """Make ``models/trellis2`` a ComfyUI model folder (``GET /models/trellis2``, extra_model_paths.yaml)."""
    fp = comfy_module("folder_paths") if have_comfy() else None
    if fp is None:
        return
    default = os.path.join(fp.models_dir, MODELS_FOLDER)
    if MODELS_FOLDER not in fp.folder_names_and_paths or default not in fp.get_folder_paths(MODELS_FOLDER):
        fp.add_model_folder_path(MODELS_FOLDER, default, is_default=True)


def trellis2_dirs() -> list[Path]:
    """Every folder that may hold pipeline folders: ``models/trellis2`` plus extra_model_paths.yaml entries."""
    fp = comfy_module("folder_paths") if have_comfy() else None
    if fp is not None and MODELS_FOLDER in fp.folder_names_and_paths:
        return [Path(p) for p in fp.get_folder_paths(MODELS_FOLDER)]
    return [models_dir() / MODELS_FOLDER]


def output_dir() -> Path:
    """ComfyUI's output folder; outside ComfyUI ``$TRELLIS2_OUTPUT_DIR`` or ``./output``."""
    fp = comfy_module("folder_paths") if have_comfy() else None
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get(_ENV_OUTPUT) or "output").expanduser()


def input_dir() -> Path:
    """ComfyUI's input folder (uploads); outside ComfyUI ``$TRELLIS2_INPUT_DIR`` or ``./input``."""
    fp = comfy_module("folder_paths") if have_comfy() else None
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get(_ENV_INPUT) or "input").expanduser()


def ensure_module_mime_type() -> None:
    """Serve ``.mjs`` (the lazily imported viewer and vendored three.js) as JavaScript on every OS.

    ComfyUI fixes the type of ``.js`` itself; some Windows registries map other extensions to text/plain, which
    browsers refuse for ES modules.
    """
    if mimetypes.guess_type("x.mjs")[0] not in ("application/javascript", "text/javascript"):
        mimetypes.add_type("application/javascript", ".mjs")


def on_pack_load() -> None:
    """ComfyUI registrations when the pack is loaded by ComfyUI (nothing happens outside ComfyUI)."""
    if have_comfy():
        register_model_folder()
        ensure_module_mime_type()


# ---------------------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    """ComfyUI's compute device (honours ``--cpu``, ``--cuda-device``); otherwise CUDA, MPS or the CPU."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    if mm is not None:
        return torch.device(mm.get_torch_device())
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def total_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes (0 when unknown, e.g. the CPU outside ComfyUI)."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    if mm is not None:
        return int(mm.get_total_memory(device))
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return 0


def free_memory(required: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models (SDXL, VAEs, …) until ``required`` bytes are free on ``device``."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    if mm is not None and device.type != "cpu":
        mm.free_memory(int(required), device)


def empty_cache() -> None:
    """Return cached allocator blocks to the driver (ComfyUI's ``soft_empty_cache``; no-op on the CPU)."""
    mm = comfy_module("comfy.model_management") if have_comfy() else None
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- core MESH
@dataclass(frozen=True)
class PlainMesh:
    """Stand-in for ComfyUI's ``MESH`` outside ComfyUI: ``vertices [B, V, 3]`` float, ``faces [B, F, 3]`` int."""

    vertices: torch.Tensor
    faces: torch.Tensor


def _core_mesh_class() -> Callable[..., Any] | None:
    latest = comfy_module("comfy_api.latest")
    types = getattr(latest, "Types", None) if latest is not None else None
    if types is not None and hasattr(types, "MESH"):
        return types.MESH
    hunyuan = comfy_module("comfy_extras.nodes_hunyuan3d") if have_comfy() else None
    if hunyuan is not None and hasattr(hunyuan, "MESH"):
        return hunyuan.MESH
    return None


def core_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> Any:
    """A core ``MESH`` (``Types.MESH`` on new ComfyUI, the Hunyuan3D class on 0.3.6x) from batched tensors.

    ``vertices [B, V, 3]`` float32 (glTF Y-up), ``faces [B, F, 3]`` int; core SaveGLB and mesh nodes read these.
    """
    cls = _core_mesh_class()
    if cls is None:
        return PlainMesh(vertices, faces)
    return cls(vertices, faces)
