"""One batch worker: a pipeline loaded once, then :meth:`BatchWorker.run` for each image (local loop or Ray actor).

The worker keeps the :class:`~trellis2_core.pipeline.pipeline.Pipeline` (its models load on the first image and stay,
as the VRAM preset says) and the matting model (loaded when the first image without transparency needs it). Each
image goes through :func:`trellis2_core.api.image_to_glb`, so a batch makes exactly the GLB that the single-image
CLI makes for the same image, seed and settings (on the same device and thread count: CPU reductions, and so the
last bits, depend on the number of threads).

Errors of one image (unreadable file, no foreground, NaN latents, out of memory, anything unexpected) end up in
that image's entry; they never stop the worker. Errors of the set-up (missing weights or packages) are *fatal*:
every later image would fail the same way, so the entry says so and the batch stops.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import FastPathConfig
from ..errors import BackendError, CancelledError, WeightsError
from ..pipeline.pipeline import Pipeline, SamplerOverrides
from ..postprocess import ExportConfig
from .inputs import BatchInput
from .manifest import Entry, file_sha256

__all__ = ["BatchOptions", "BatchWorker", "FATAL_ERRORS", "fatal_error", "set_threads"]

log = logging.getLogger(__name__)

FATAL_ERRORS = {"WeightsError": WeightsError, "BackendError": BackendError}


@dataclass(frozen=True)
class BatchOptions:
    """Everything a worker needs besides the images: checked settings, picklable (Ray sends it to actors)."""

    pipeline: Any  # Hugging Face id, folder or 'demo' (str/Path); a loaded Pipeline only for local batches
    pipeline_type: str | None
    samplers: SamplerOverrides
    max_num_tokens: int
    export: ExportConfig
    device: str  # 'cpu', 'cuda', 'cuda:N', 'mps' (resolved where the worker runs)
    dtype: str | None
    models_dir: Path | None
    offline: bool | None
    background: str
    matting_model: Any  # folder / HF id / None (default model) / a callable (local batches only)
    vram_preset: str
    fast: FastPathConfig | None
    threads: int | None = None  # torch CPU threads of the worker; None leaves torch's setting


class BatchWorker:
    """Loads the pipeline once (nothing heavy until the first image) and turns images into GLBs."""

    def __init__(self, options: BatchOptions, name: str = "local") -> None:
        from ..arguments import resolve_device

        self.options, self.name = options, name
        self.device = resolve_device(options.device)
        if isinstance(options.pipeline, Pipeline):
            self.pipeline = options.pipeline
        else:
            self.pipeline = Pipeline.from_pretrained(
                options.pipeline, models_dir=options.models_dir, device=self.device, dtype_override=options.dtype,
                offline=options.offline, vram_preset=options.vram_preset)
        # sampler settings and every checkpoint header, before the first image (a WeightsError here is fatal)
        self.pipeline.check_ready(options.pipeline_type, options.samplers)
        self._matting: Any = None

    def _matting_model(self) -> Any:
        """The matting model, loaded on first need (or the user's callable)."""
        source = self.options.matting_model
        if source is not None and not isinstance(source, (str, os.PathLike)):
            return source
        if self._matting is None:
            from ..preprocess.background import load_matting_model

            self._matting = load_matting_model(source, device=self.device, models_dir=self.options.models_dir,
                                               offline=self.options.offline)
        return self._matting

    def run(self, item: BatchInput, entry: Entry, target: Path, progress: Any = None) -> Entry:
        """Make ``item``'s GLB at ``target``; returns a copy of ``entry`` with the outcome.

        ``status`` is 'ok' or 'failed' (a fatal failure has ``error`` starting with 'WeightsError:' or
        'BackendError:'). Cancellation (:class:`CancelledError`, ``KeyboardInterrupt``) propagates; the GLB is then
        not written (no partial file).
        """
        from ..api import image_to_glb
        from ..arguments import load_image
        from ..preprocess.background import needs_matting

        out = copy.deepcopy(entry)
        out.worker, out.attempts = self.name, entry.attempts + 1
        o = self.options
        clock = time.perf_counter()
        try:
            out.input_sha256 = out.input_sha256 or file_sha256(item.path)
            image = load_image(item.path, "image")
            matting = self._matting_model() if needs_matting(image, o.background) else None
            result = image_to_glb(
                image, target, pipeline=self.pipeline, pipeline_type=o.pipeline_type, seed=item.seed,
                samplers=o.samplers, max_num_tokens=o.max_num_tokens, export=o.export, device=self.device,
                background=o.background, matting_model=matting, progress=progress, fast=o.fast)
        except (CancelledError, KeyboardInterrupt):
            raise
        except tuple(FATAL_ERRORS.values()) as err:
            out.seconds = {"total": round(time.perf_counter() - clock, 3)}
            out.done("failed", f"{type(err).__name__}: {err}")
            return out
        except Exception as err:  # noqa: BLE001 - one bad image never stops the batch; its error is recorded
            log.debug("%s failed", item.key, exc_info=True)
            out.seconds = {"total": round(time.perf_counter() - clock, 3)}
            out.done("failed", f"{type(err).__name__}: {err}")
            return out
        out.seconds = {**{k: round(v, 3) for k, v in result.timings.items()},
                       "total": round(time.perf_counter() - clock, 3)}
        out.faces, out.vertices, out.bytes = result.export.faces, result.export.vertices, result.export.bytes
        out.sha256 = file_sha256(target)
        out.done("ok")
        return out


def fatal_error(entry: Entry) -> Exception | None:
    """The exception to stop the batch with, when ``entry`` failed for a reason every image shares."""
    if entry.status != "failed":
        return None
    kind, _, message = entry.error.partition(": ")
    cls = FATAL_ERRORS.get(kind)
    return cls(f"{entry.input}: {message}") if cls is not None else None


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads when ``threads`` is given; returns the previous number (to restore)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    return before
