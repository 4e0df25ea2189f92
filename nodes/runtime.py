"""What the nodes share: the loaded-pipeline handle with its VRAM preset and fast-path switches, and progress/cancel
plumbing.

The VRAM preset is the library's (``trellis2_core.loading.residency``), applied by the pipeline's model store:

* ``high``: every model stays on the GPU after its stage (fastest; ~16–21 GB for the 4B pipeline).
* ``medium``: a model's weights are on the GPU only while its stage runs; the next model is copied in from
  page-locked host memory during the current stage (≤ 8 GB at 1024, ~3 % slower; benchmarks/RESULTS.md).
* ``low``: weights stay in host memory and each transformer/decoder block is streamed in just before it runs
  (≤ 4 GB at 1024, ~7 % slower).

Before a stage runs on a GPU under ``medium``/``low``, ComfyUI's model management is asked to free room (it unloads
its own models, e.g. an SDXL checkpoint), and afterwards the allocator cache is handed back. Models stay loaded (in
host memory) between stages, so re-runs do not read the checkpoints again.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from trellis2_core.cancel import cancel_scope
from trellis2_core.config import FastPathConfig
from trellis2_core.errors import CancelledError, OutOfMemoryError, WeightsError, is_out_of_memory
from trellis2_core.loading import resolve_model_files
from trellis2_core.loading.residency import VRAM_PRESETS
from trellis2_core.loading.residency import resolve_preset as library_resolve_preset
from trellis2_core.pipeline.pipeline import Pipeline
from trellis2_core.pipeline.stages import StageHooks

from . import comfy_bridge as bridge

__all__ = ["VRAM_PRESETS", "PipelineHandle", "resolve_preset", "StageProgress", "comfy_errors", "OOM_HINT"]


def resolve_preset(preset: str, device: torch.device) -> str:
    """The library's one VRAM policy (:func:`trellis2_core.loading.residency.resolve_preset`), fed with what
    ComfyUI can make free on ``device``: its total memory, as ComfyUI unloads its own models for ours when asked."""
    free = bridge.total_memory(device) if device.type == "cuda" else None
    return library_resolve_preset(preset, device, free_bytes=free)


@dataclass(frozen=True)
class PipelineHandle:
    """What travels on a ``TRELLIS2_PIPELINE`` socket: the pipeline, where it runs and its residency policy."""

    pipeline: Pipeline
    source: str
    root: Path
    device: torch.device
    vram_preset: str  # resolved: high / medium / low
    fast: FastPathConfig | None = field(default_factory=FastPathConfig.fast)  # None = the plain eager path
    _extras: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # e.g. matting models

    @property
    def config(self):
        return self.pipeline.config

    def conditioner(self) -> Pipeline:
        """The pipeline to run DINOv3 with (its weights follow the VRAM preset like every other model's)."""
        return self.pipeline

    def extra_model(self, key: str, load: Callable[[], Any]) -> Any:
        """A helper model (e.g. background matting) kept with the pipeline unless the preset is ``low``."""
        if self.vram_preset == "low":
            return load()
        if key not in self._extras:
            self._extras[key] = load()
        return self._extras[key]

    def _estimate_bytes(self, keys: Iterable[str]) -> int:
        total = 0
        files = getattr(self.pipeline, "comfy_files", None)
        for key in keys:
            if files is not None:  # ComfyUI core's files: sizes from their headers
                total += files.model_nbytes(key)
                continue
            try:
                _, st = resolve_model_files(self.config.root, self.config.model_ref(key), offline=True)
                total += st.stat().st_size
            except (WeightsError, OSError):
                continue  # not downloaded yet: the loader will fetch it and report problems itself
        return int(total * 1.25)  # + activations, roughly

    @contextlib.contextmanager
    def models_for(self, keys: Iterable[str]) -> Iterator[None]:
        """Around one stage that uses pipeline models ``keys``: under ``medium``/``low`` on a GPU, make room in
        ComfyUI before and hand the allocator cache back after (the library moves the weights themselves)."""
        keys = tuple(keys)
        offloads = self.vram_preset in ("medium", "low") and self.device.type != "cpu"
        if offloads:
            bridge.free_memory(self._estimate_bytes(keys), self.device)
        try:
            yield
        finally:
            if offloads:
                bridge.empty_cache()


class StageProgress:
    """Adapts library progress ``(stage, i, n)`` to one ComfyUI progress bar spanning several stages.

    Also serves as the ``progress`` object of :func:`trellis2_core.postprocess.export_glb` (``step`` +
    ``cancelled``) and builds :class:`StageHooks` whose ``should_cancel`` polls ComfyUI's Cancel button.
    """

    def __init__(self, total: int) -> None:
        self.total = max(int(total), 1)
        self.bar = bridge.progress_bar(self.total)
        self._stage: str | None = None
        self._base = 0
        self._last_n = 0

    def step(self, stage: str, i: int, n: int) -> None:
        """Step ``i`` of ``n`` (1-based) of ``stage``; a new stage starts after the previous one.

        ``group:part`` names (the export steps of ``image_to_glb``) count as one stage ``group``.
        """
        stage = stage.split(":", 1)[0]
        if stage != self._stage:
            if self._stage is not None:
                self._base += self._last_n
            self._stage = stage
        self._last_n = n
        self.bar.update_absolute(min(self._base + i, self.total), self.total)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` units of work done outside a sampler (decoding, preprocessing)."""
        self._stage = None
        self._base += self._last_n + n
        self._last_n = 0
        self.bar.update_absolute(min(self._base, self.total), self.total)

    @staticmethod
    def cancelled() -> bool:
        return bridge.interrupted()

    def grouped(self, stage: str) -> "_Grouped":
        """An ``export_glb`` progress object whose steps (each named after its step) all count as ``stage``."""
        return _Grouped(self, stage)

    def hooks(self) -> StageHooks:
        return StageHooks(progress=self.step, should_cancel=bridge.interrupted)


class _Grouped:
    def __init__(self, parent: StageProgress, stage: str) -> None:
        self._parent, self._stage = parent, stage

    def step(self, _stage: str, i: int, n: int) -> None:
        self._parent.step(self._stage, i, n)

    @staticmethod
    def cancelled() -> bool:
        return bridge.interrupted()


OOM_HINT = ("set Load TRELLIS.2 Model's vram_preset to 'low', choose a smaller resolution ('1024_cascade' or "
            "'512'), or lower max_num_tokens / texture_size")


@contextlib.contextmanager
def comfy_errors(oom_hint: str = OOM_HINT) -> Iterator[None]:
    """Library cancellation → ComfyUI's interrupt (the UI shows "interrupted", not an error); running out of device
    memory → :class:`OutOfMemoryError` saying which setting to lower.

    Inside the block ComfyUI's Cancel is an active cancel poll (:func:`trellis2_core.cancel.cancel_scope`): model
    blocks and the long loops of mesh processing, baking and writing stop within about a second.
    """
    try:
        with cancel_scope(lambda: bridge.interrupted()):
            yield
    except CancelledError as err:
        bridge.raise_interrupted(err)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        bridge.empty_cache()
        raise OutOfMemoryError(f"out of memory: {oom_hint}") from err
