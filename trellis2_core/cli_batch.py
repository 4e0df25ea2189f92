"""``python -m trellis2_core batch INPUT_DIR -o OUTPUT_DIR [options]``: one GLB per image, models loaded once.

Thin argparse layer over :func:`trellis2_core.batch.run_batch`. The generation options are the single-image
command's (:func:`trellis2_core.__main__.add_run_options`, without ``--mask``); the batch adds seeds per image,
resuming, threads and Ray workers. Two progress bars: the batch's images and the current image's stages (Ray
batches show the first only). Exit status: 0 when every image is done, 1 when some failed (their errors are in the
manifest and printed), 2 for a mistake in the command or set-up (one ``error:`` line), 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, Sequence

from .__main__ import CLI_NAMES, CLI_STAGE_NAMES, _WEIGHTS_HELP, _export_options, _setup_logging, _stage_overrides, \
    add_run_options

__all__ = ["main", "build_parser", "BATCH_NAMES"]

#: library argument -> the flag that sets it (error messages name the flag)
BATCH_NAMES = {**CLI_NAMES, "images": "INPUT_DIR", "output_dir": "-o/--output", "seed_per_image": "--seed-per-image",
               "threads": "--threads", "workers": "--workers", "ray_workers": "--ray-workers",
               "ray_address": "--ray-address"}


def build_parser() -> argparse.ArgumentParser:
    """The batch subcommand's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m trellis2_core batch",
        description="Every image in INPUT_DIR (png, jpg, jpeg, webp, bmp, tif, tiff; not subfolders) to a GLB in "
                    "OUTPUT_DIR, named after the image (<name>.glb), with the models loaded once. OUTPUT_DIR also "
                    "gets manifest.json and manifest.csv (per image: input, output, seed, status, error, timings). "
                    "Running it again skips the images already done with the same seed and settings. Seeds: every "
                    "image gets --seed, as 'python -m trellis2_core IMAGE' would give it, unless --seed-per-image.",
        epilog="Exit status: 0 all images done, 1 some failed (see the manifest), 2 a mistake in the command or the "
               "set-up, 130 interrupted (the manifest lists what is done; run again to resume). " + _WEIGHTS_HELP,
    )
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder of input images")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT_DIR",
                   help="output folder (created when missing): one <name>.glb per image + manifest.json/.csv")
    add_run_options(p, mask=False)
    b = p.add_argument_group("batch")
    b.add_argument("--seed-per-image", action="store_true",
                   help="give each image its own seed, derived from --seed and its file name (stable when files "
                        "are added or removed; written to the manifest); default: every image uses --seed")
    b.add_argument("--no-resume", dest="resume", action="store_false",
                   help="make every image again, also those finished by an earlier run into OUTPUT_DIR")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per worker (default: torch's choice; Ray CPU workers: their CPUs). The "
                        "same seed gives the same bytes only with the same device and thread count")
    b.add_argument("--workers", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: one Ray actor per GPU, each holding the models "
                        "(needs 'pip install -r requirements-ray.txt')")
    b.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="number of Ray actors (default: one per GPU of the cluster; 1 without GPUs; with --device "
                        "cpu, N actors share the CPUs)")
    b.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="join a running Ray cluster ('auto' or ray://host:10001; default: a private local Ray "
                        "instance for this batch). Every node needs this pack and its requirements installed")
    return p


class _BatchBars:
    """A bar over the images and, below it, one bar per stage of the current image."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.images: Any = None
        self.stage: Any = None
        self.group: str | None = None

    def batch(self, done: int, total: int, current: str) -> None:
        if not self.enabled:
            return
        if self.images is None:
            from tqdm import tqdm

            self.images = tqdm(total=total, desc="images", unit="image", file=sys.stderr, dynamic_ncols=True,
                               position=0, leave=True)
        self.images.update(max(0, done - self.images.n))
        if current:
            self.images.set_postfix_str(current)

    def step(self, stage: str, i: int, n: int) -> None:
        if not self.enabled:
            return
        group = stage.partition(":")[0]
        if group != self.group or self.stage is None:
            self._close_stage()
            from tqdm import tqdm

            self.group = group
            self.stage = tqdm(total=n, desc=group, unit="step", file=sys.stderr, dynamic_ncols=True, position=1,
                              leave=False)
        if self.stage.total != n:
            self.stage.total = n
        self.stage.update(max(0, i - self.stage.n))

    def _close_stage(self) -> None:
        if self.stage is not None:
            self.stage.close()
        self.stage, self.group = None, None

    def close(self) -> None:
        self._close_stage()
        if self.images is not None:
            self.images.close()
            self.images = None


def _error(bars: _BatchBars, message: str, verbose: bool, status: int) -> int:
    bars.close()
    if verbose:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    from .errors import BackendError, InputError, Trellis2Error, WeightsError

    bars = _BatchBars(enabled=not args.quiet)
    try:
        from .dependencies import check_torch

        check_torch()
        from .batch import run_batch
        from .config import FastPathConfig

        fast = FastPathConfig.for_speed(args.speed).with_attention(args.attention)
        result = run_batch(
            args.input_dir, args.output, pipeline=args.pipeline, pipeline_type=args.pipeline_type, seed=args.seed,
            seed_per_image=args.seed_per_image, steps=args.steps, guidance=args.guidance,
            samplers=_stage_overrides(args), max_num_tokens=args.max_tokens, export=_export_options(args),
            device=args.device, dtype=args.dtype, models_dir=args.models_dir, offline=True if args.offline else None,
            background=args.background, matting_model=args.rembg_model, vram_preset=args.vram, fast=fast,
            threads=args.threads, resume=args.resume, progress=bars, workers=args.workers,
            ray_workers=args.ray_workers, ray_address=args.ray_address, names=BATCH_NAMES,
            stage_names=CLI_STAGE_NAMES)
    except WeightsError as err:
        return _error(bars, f"{err}\n\n{_WEIGHTS_HELP}", args.verbose, 2)
    except (InputError, BackendError) as err:
        return _error(bars, str(err), args.verbose, 2)
    except Trellis2Error as err:  # cancelled, out of memory
        return _error(bars, f"{type(err).__name__}: {err}; the manifest lists what is done (run again to resume)",
                      args.verbose, 1)
    except KeyboardInterrupt:
        bars.close()
        print("interrupted; the manifest lists what is done (run again to resume)", file=sys.stderr)
        return 130
    except OSError as err:
        return _error(bars, f"{type(err).__name__}: {err}", args.verbose, 2)
    bars.close()
    counts = result.counts
    for entry in result.entries:
        if entry.status == "failed":
            print(f"failed: {entry.input}: {entry.error}", file=sys.stderr)
    made = counts.get("ok", 0) - result.skipped
    print(f"{result.output_dir}: {made} made, {result.skipped} already done, {counts.get('failed', 0)} failed; "
          f"manifest {result.manifest} ({result.seconds:.1f} s)")
    return 1 if counts.get("failed", 0) else 0
