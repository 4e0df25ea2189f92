"""Many images → many GLBs: :func:`run_batch` (the library call behind ``python -m trellis2_core batch``).

The models load once; every image goes through the whole pipeline (:func:`trellis2_core.api.image_to_glb`) and
gets its own GLB in the output folder (names: :mod:`.inputs`); ``manifest.json``/``manifest.csv`` record each
image's outcome (:mod:`.manifest`). A re-run skips the images already finished with the same seed and settings. One
bad image never stops the batch. Cancelling (``progress.cancelled()``, Ctrl-C) stops it within about a second: the
image being made is marked ``cancelled``, the rest stay ``pending``, the manifest is saved, and no partial GLB is
left. ``workers='ray'`` spreads the images over Ray actors, one per GPU (:mod:`.ray_pool`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from ..errors import CancelledError, InputError
from ..pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS, DEFAULT_SEED, Pipeline
from .inputs import BatchInput, plan_inputs
from .manifest import MANIFEST_JSON, Entry, Manifest, file_sha256
from .worker import BatchOptions, BatchWorker, fatal_error, set_threads

__all__ = ["run_batch", "BatchResult", "BatchProgress", "WORKER_KINDS", "report_batch"]

log = logging.getLogger(__name__)

WORKER_KINDS = ("local", "ray")
DEFAULT_PIPELINE = "microsoft/TRELLIS.2-4B"


class BatchProgress(Protocol):
    """Progress of a batch: ``batch(done, total, current)`` when an image starts (``current`` = its input name)
    and when one finishes (``current`` = ''); ``step(stage, i, n)`` for the current image's stages (local batches;
    see :class:`trellis2_core.api.Progress`). An optional ``cancelled() -> bool`` is polled often."""

    def batch(self, done: int, total: int, current: str) -> None: ...

    def step(self, stage: str, i: int, n: int) -> None: ...


@dataclass(frozen=True)
class BatchResult:
    """What :func:`run_batch` did. ``entries`` are this run's inputs, in input order."""

    output_dir: Path
    manifest: Path
    entries: tuple[Entry, ...]
    skipped: int  # finished by an earlier run
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return out


class _ImageProgress:
    """The current image's progress (``image_to_glb``'s protocol) forwarded to the batch's progress."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def step(self, stage: str, i: int, n: int) -> None:
        step = getattr(self.progress, "step", None)
        if step is not None:
            step(stage, i, n)

    def cancelled(self) -> bool:
        poll = getattr(self.progress, "cancelled", None)
        return bool(poll()) if poll is not None else False


def _check_output_dir(output_dir: Any, label: str) -> Path:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise InputError(f"{label} must be a folder path, got {type(output_dir).__name__} {str(output_dir)[:40]!r}")
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{label} {str(folder)!r} is a file; batch writes one GLB per image into a folder: pass "
                         "a folder (it is created when missing)")
    if not folder.exists() and folder.suffix.lower() == ".glb":
        raise InputError(f"{label} {str(folder)!r} looks like a GLB file name; batch writes one GLB per image into "
                         f"a folder: pass a folder such as {str(folder.with_suffix(''))!r}")
    return folder


def _settings(o: BatchOptions, seed: int, seed_per_image: bool) -> tuple[dict[str, Any], str]:
    """The run's settings for the manifest and the key of those that change the GLBs (not device, speed, …)."""
    source = o.pipeline.config.root if isinstance(o.pipeline, Pipeline) else o.pipeline
    matting = o.matting_model if o.matting_model is None or isinstance(o.matting_model, (str, os.PathLike)) \
        else f"<{type(o.matting_model).__name__}>"
    keyed = {"pipeline": str(source), "pipeline_type": o.pipeline_type, "samplers": dataclasses.asdict(o.samplers),
             "max_num_tokens": o.max_num_tokens, "export": dataclasses.asdict(o.export), "dtype": o.dtype,
             "background": o.background, "matting_model": None if matting is None else str(matting)}
    text = json.dumps(keyed, sort_keys=True, default=str)
    settings = {**json.loads(text), "seed": seed, "seed_per_image": seed_per_image, "device": o.device,
                "vram_preset": o.vram_preset, "threads": o.threads,
                "fast": dataclasses.asdict(o.fast) if o.fast is not None else None}
    return settings, hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(manifest: Manifest, items: list[BatchInput], resume: bool) -> tuple[list[BatchInput], int]:
    """Fill the manifest: earlier finished results kept, the rest pending; returns (to do, skipped)."""
    old = Manifest.previous(manifest.folder) if manifest.folder.is_dir() else {}
    todo, skipped = [], 0
    for item in items:
        sha = file_sha256(item.path)
        prev = old.get(item.key)
        if resume and manifest.finished_before(prev, item.seed, item.output, sha):
            manifest.add(prev)
            skipped += 1
            continue
        manifest.add(Entry(input=item.key, output=item.output, seed=item.seed, input_sha256=sha,
                           settings_key=manifest.settings_key))
        todo.append(item)
    manifest.keep_history(old.values())
    return todo, skipped


def _run_local(worker: BatchWorker, manifest: Manifest, todo: list[BatchInput], progress: Any,
               total: int, done: int) -> None:
    """The images one after the other in this process, with one pipeline."""
    threads = set_threads(worker.options.threads)
    try:
        item_progress = _ImageProgress(progress)
        for item in todo:
            entry = manifest.entries[item.key]
            report_batch(progress, done, total, item.key)
            try:
                result = worker.run(item, entry, manifest.folder / item.output, item_progress)
            except (CancelledError, KeyboardInterrupt) as err:
                entry.done("cancelled", "interrupted" if isinstance(err, KeyboardInterrupt) else str(err))
                raise
            manifest.add(result)
            manifest.save()
            done += 1
            report_batch(progress, done, total, "")
            fatal = fatal_error(result)
            if fatal is not None:
                raise fatal
    finally:
        set_threads(threads)


def report_batch(progress: Any, done: int, total: int, current: str) -> None:
    """``progress.batch(done, total, current)`` when the progress object has that method."""
    batch = getattr(progress, "batch", None)
    if batch is not None:
        batch(done, total, current)


def run_batch(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    pipeline: str | os.PathLike | Pipeline = DEFAULT_PIPELINE,
    pipeline_type: str | None = None,
    seed: int = DEFAULT_SEED,
    seed_per_image: bool = False,
    steps: int | None = None,
    guidance: float | None = None,
    samplers: Mapping[str, Mapping[str, Any]] | None = None,
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
    export: Any = None,
    device: str | None = None,
    dtype: str | None = None,
    models_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    background: str = "auto",
    matting_model: Any = None,
    vram_preset: str = "auto",
    fast: Any = None,
    threads: int | None = None,
    resume: bool = True,
    progress: Any = None,
    workers: str = "local",
    ray_workers: int | None = None,
    ray_address: str | None = None,
    names: Mapping[str, str] | None = None,
    stage_names: Mapping[str, Mapping[str, str]] | None = None,
) -> BatchResult:
    """Turn every image of a folder (or a list of image files) into a GLB in ``output_dir``.

    Args:
        images: a folder (its image files, not subfolders) or a list of image files.
        seed: every image's seed; with ``seed_per_image`` each image gets its own, derived from ``seed`` and its
            name (recorded in the manifest).
        resume: skip images whose earlier result in ``output_dir`` is finished with the same seed and settings.
        progress: see :class:`BatchProgress`.
        threads: torch CPU threads per worker (None: torch's default; Ray CPU workers: their CPUs).
        workers: 'local' (this process) or 'ray' (one Ray actor per GPU; ``ray_workers`` actors on CPUs;
            ``ray_address`` joins an existing cluster, e.g. 'auto' or 'ray://host:10001').
        names, stage_names: labels of the arguments in error messages (the CLI passes its flags).
        Other arguments: as :func:`trellis2_core.api.image_to_glb`.

    Every argument is checked and the input folder listed before anything loads; then the pipeline's checkpoint
    headers are checked (:meth:`Pipeline.check_ready`) before the first image.

    Raises:
        InputError: a bad argument, an input folder without images, an unwritable output folder.
        WeightsError, BackendError: the set-up is broken (missing weights or packages, no such device); raised
            before the first image or, when the first use finds it, after saving the manifest.
        CancelledError, KeyboardInterrupt: after saving the manifest (the current image 'cancelled').
    """
    from ..arguments import check_arguments
    from ..params import check_device_name

    started = time.perf_counter()
    names = dict(names or {})
    folder = _check_output_dir(output_dir, names.get("output_dir", "output_dir"))
    if workers not in WORKER_KINDS:
        raise InputError(f"{names.get('workers', 'workers')} must be one of {', '.join(WORKER_KINDS)}, got "
                         f"{workers!r}")
    if not isinstance(seed_per_image, bool):
        raise InputError(f"{names.get('seed_per_image', 'seed_per_image')} must be True or False")
    input_root, items = plan_inputs(images, seed if isinstance(seed, int) else 0, seed_per_image,
                                    names.get("images", "images"))
    ray = workers == "ray"
    if ray and isinstance(pipeline, Pipeline):
        raise InputError(f"{names.get('workers', 'workers')}='ray' loads the pipeline in every worker: pass its "
                         "Hugging Face id or folder, not a loaded Pipeline")
    if ray and matting_model is not None and not isinstance(matting_model, (str, os.PathLike)):
        raise InputError(f"{names.get('workers', 'workers')}='ray' loads the matting model in every worker: pass "
                         "its folder or Hugging Face id, not a callable")
    device_name = check_device_name(device, names.get("device", "device"))
    checked = check_arguments(
        folder / items[0].output, pipeline=pipeline, pipeline_type=pipeline_type, seed=seed, steps=steps,
        guidance=guidance, samplers=samplers, max_num_tokens=max_num_tokens, export=export,
        device="cpu" if ray else device, dtype=dtype, models_dir=models_dir, offline=offline, background=background,
        matting_model=matting_model, progress=None, fast=fast, vram_preset=vram_preset, names=names,
        stage_names=stage_names)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"{names.get('threads', 'threads')} must be a whole number >= 1, got {threads!r}")
    if ray_workers is not None and (isinstance(ray_workers, bool) or not isinstance(ray_workers, int)
                                    or ray_workers < 1):
        raise InputError(f"{names.get('ray_workers', 'ray_workers')} must be a whole number >= 1, got "
                         f"{ray_workers!r}")
    if ray:
        from ..optional import require

        require("ray", f"{names.get('workers', 'workers')} ray (batches over several GPUs or machines)")
    from ..config import FastPathConfig

    options = BatchOptions(
        pipeline=pipeline, pipeline_type=checked.pipeline_type, samplers=checked.samplers,
        max_num_tokens=checked.max_num_tokens, export=checked.export,
        device=device_name if ray else str(checked.device), dtype=checked.dtype, models_dir=checked.models_dir,
        offline=checked.offline, background=checked.background, matting_model=matting_model,
        vram_preset=checked.vram_preset, fast=FastPathConfig.fast() if fast is None else fast, threads=threads)
    settings, key = _settings(options, checked.seed, seed_per_image)
    manifest = Manifest(folder, settings, key, input_dir=input_root.resolve() if input_root else None)
    todo, skipped = _plan(manifest, items, resume)
    if skipped:
        log.info("batch: %d of %d images already finished in %s (skipped)", skipped, len(items), folder)
    # the pipeline's weights are checked before anything is written (Ray workers check them where they run)
    worker = BatchWorker(options) if todo and not ray else None
    manifest.save()
    if todo:
        try:
            if worker is None:
                from .ray_pool import run_ray

                run_ray(options, manifest, todo, progress, len(items), skipped, ray_workers, ray_address, names)
            else:
                _run_local(worker, manifest, todo, progress, len(items), skipped)
        finally:
            manifest.save()  # whatever happened: every entry is final, cancelled or pending
    else:
        report_batch(progress, skipped, len(items), "")
    entries = tuple(manifest.entries[i.key] for i in items)
    result = BatchResult(output_dir=folder, manifest=folder / MANIFEST_JSON, entries=entries, skipped=skipped,
                         seconds=time.perf_counter() - started)
    log.info("batch: %s in %.1f s", ", ".join(f"{v} {k}" for k, v in result.counts.items()), result.seconds)
    return result
