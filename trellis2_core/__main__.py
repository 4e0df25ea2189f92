"""Command line: ``python -m trellis2_core IMAGE -o OUT.glb [options]`` (spec §1, §2, §9), and
``python -m trellis2_core texture MESH IMAGE -o OUT.glb`` (:mod:`.cli_texture`).

Thin argparse layer over :func:`trellis2_core.api.image_to_glb`, with one tqdm bar per stage (sampler stages count
steps). Every option is checked first (:func:`_check`, the library's checks under the flags' names), before any
model loads. Errors the user can fix (bad options or files, missing weights, missing packages or devices, an
unreadable file) print one line ``error: ...`` and exit with status 2, without a traceback (``-v`` shows it); running
out of memory and cancellation exit with 1, an interrupt with 130.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Sequence

from .config import ATTENTION_CHOICES, SPEEDS  # torch-free, like everything the parser needs
from .params import ALPHA_MODES, PIPELINE_TYPES, TEXTURE_FORMATS

__all__ = ["main", "build_parser", "add_run_options", "CLI_NAMES", "CLI_STAGE_NAMES", "SUBCOMMANDS"]

log = logging.getLogger("trellis2_core")

#: library argument -> the flag that sets it (error messages name the flag)
CLI_NAMES = {
    "image": "IMAGE", "output_path": "-o/--output", "pipeline": "--pipeline", "models_dir": "--models-dir",
    "pipeline_type": "--type", "device": "--device", "dtype": "--dtype", "vram_preset": "--vram", "seed": "--seed",
    "steps": "--steps", "guidance": "--guidance", "samplers": "sampler options", "max_num_tokens": "--max-tokens",
    "background": "--background", "mask": "--mask", "matting_model": "--rembg-model", "export": "export options",
    "export.target_faces": "--faces", "export.texture_size": "--texture-size", "export.texture_format":
    "--texture-format", "export.alpha_mode": "--alpha-mode", "export.remesh": "--remesh",
}
_STAGE_FLAGS = (("ss", "sparse_structure"), ("shape", "shape_slat"), ("tex", "tex_slat"))
CLI_STAGE_NAMES = {stage: {"steps": f"--{flag}-steps", "guidance_strength": f"--{flag}-guidance"}
                   for flag, stage in _STAGE_FLAGS}
_WEIGHTS_HELP = (
    "Where to put the weights: pass --pipeline /path/to/TRELLIS.2-4B (a folder with pipeline.json and ckpts/), or "
    "put that folder in <models-dir>/trellis2/ and pass --models-dir, or let it download from Hugging Face "
    "(needs network access; microsoft/TRELLIS.2-4B needs the gated facebook/dinov3-vitl16-pretrain-lvd1689m: accept "
    "its licence on huggingface.co and run `hf auth login`). A matting model folder goes to --rembg-model PATH."
)


#: subcommands: ``python -m trellis2_core NAME ...`` runs ``main(argv)`` of the module (relative to this package)
SUBCOMMANDS = {
    "batch": (".cli_batch", "a folder of images -> one GLB per image (python -m trellis2_core batch --help)"),
    "texture": (".cli_texture", "texture your own mesh from an image, keeping its UVs (python -m trellis2_core "
                                "texture --help)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m trellis2_core",
        description="TRELLIS.2 image to textured 3D model (GLB). Subcommands: " + "; ".join(
            f"{name}: {about}" for name, (_, about) in SUBCOMMANDS.items()) + ".",
        epilog=_WEIGHTS_HELP,
    )
    p.add_argument("image", help="input image (RGBA with transparent background, or any image + background removal;"
                                 " an image file named like a subcommand: write ./NAME)")
    p.add_argument("-o", "--output", required=True, help="output .glb path")
    add_run_options(p)
    return p


def add_run_options(p: argparse.ArgumentParser, mask: bool = True) -> None:
    """The options shared by every command that generates: model, sampling, background, export, output."""
    g = p.add_argument_group("model")
    g.add_argument("--pipeline", default="microsoft/TRELLIS.2-4B",
                   help="Hugging Face id or local pipeline folder (default: %(default)s)")
    g.add_argument("--models-dir", default=None, help="folder searched for pipelines (<dir>/trellis2/<name>), "
                                                      "DINOv3 and matting models (<dir>/rembg/<name>)")
    g.add_argument("--type", dest="pipeline_type", default=None, metavar="TYPE",
                   help=f"pipeline type: {', '.join(PIPELINE_TYPES)} (or N_cascade, N = 1024 + k*128 up to 2048; "
                        "default: pipeline.json's, officially 1024_cascade)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="override the checkpoints' precision (default: their own, bf16 DiTs / fp16 VAEs; the VAEs "
                        "have no bfloat16 mode and run in float32 then)")
    g.add_argument("--offline", action="store_true", help="never download; use local folders and the HF cache")
    g.add_argument("--vram", choices=("auto", "high", "medium", "low"), default="auto",
                   help="weights on the GPU: high = all resident (fastest, ~20 GB at 1024); medium = one stage's "
                        "model at a time, the next prefetched (≤ 8 GB at 1024); low = blocks streamed from host "
                        "memory (≤ 4 GB); auto = by free memory (default: %(default)s)")
    g.add_argument("--speed", choices=SPEEDS, default="fast",
                   help="fast: cached cross-attention K/V, batched CFG, compiled blocks, fused kernels, the fastest "
                        "attention installed (exact up to rounding; compiling adds ~15-35 s to a process's first "
                        "generation); fast_no_compile: the same without compiling (for one or a few assets per "
                        "process); eager: the plain op-by-op path (default: %(default)s)")
    g.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                   help="attention kernel on NVIDIA GPUs: auto = the --speed choice (fast: FlashAttention-4 for long "
                        "sequences when installed, 'install.py --fa4', else cuDNN); flash = FlashAttention-2 "
                        "(official); triton = this pack's kernel (default: %(default)s)")
    s = p.add_argument_group("sampling")
    s.add_argument("--seed", type=int, default=42, help="random seed, 0 .. 2**64-1 (default: %(default)s, as official)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps of every stage, 1..500 (default 12)")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance of the structure and shape stages, 0..50 (default 7.5)")
    for stage, label in (("ss", "sparse-structure"), ("shape", "shape"), ("tex", "material")):
        s.add_argument(f"--{stage}-steps", type=int, default=None, help=f"steps of the {label} stage")
        s.add_argument(f"--{stage}-guidance", type=float, default=None, help=f"guidance of the {label} stage")
    s.add_argument("--max-tokens", type=int, default=49152,
                   help="token cap of the 1536/2048 cascades, 1..1000000 (lower it when out of memory; default: "
                        "%(default)s)")
    b = p.add_argument_group("background")
    b.add_argument("--background", choices=("auto", "keep", "model", "none"), default="auto",
                   help="auto: keep the alpha of an RGBA image, else run the matting model; keep: use the alpha; "
                        "model: always run the matting model; none: use the image as it is (no crop)")
    if mask:
        b.add_argument("--mask", default=None, help="foreground mask image (white = object); replaces matting")
    b.add_argument("--rembg-model", default=None,
                   help="matting model folder or HF id (default ZhengPeng7/BiRefNet, MIT; briaai/RMBG-2.0 works "
                        "too); its folder's Python code is run (trust_remote_code)")
    e = p.add_argument_group("export")
    e.add_argument("--faces", type=int, default=500_000, help="target face count, 0 = no decimation, at most "
                                                              "16777216 (default: %(default)s)")
    e.add_argument("--texture-size", type=int, default=2048,
                   help="texture side in pixels, 256..8192 (default: %(default)s)")
    e.add_argument("--texture-format", choices=TEXTURE_FORMATS, default="png",
                   help="png (opens everywhere) or webp (smaller, needs EXT_texture_webp; official)")
    e.add_argument("--alpha-mode", choices=ALPHA_MODES, default="OPAQUE",
                   help="glTF alpha mode of the material (default: %(default)s, as official)")
    e.add_argument("--remesh", action="store_true",
                   help="narrow-band dual-contouring remesh before decimation, as the official demo (closed, "
                        "single-sided shell ~1 voxel outside the surface; slower on CPU)")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")


class _Bars:
    """One tqdm bar per stage; 'export:<step>' stages share one 'export' bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.group: str | None = None
        self.bar: Any = None

    def step(self, stage: str, i: int, n: int) -> None:
        if not self.enabled:
            return
        group, _, detail = stage.partition(":")
        if group != self.group or self.bar is None:
            self.close()
            from tqdm import tqdm

            self.group = group
            self.bar = tqdm(total=n, desc=group, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)
        if self.bar.total != n:
            self.bar.total = n
        if detail:
            self.bar.set_postfix_str(detail, refresh=False)
        self.bar.update(max(0, i - self.bar.n))

    def close(self, failed: bool = False) -> None:
        if self.bar is not None:
            if failed:
                self.bar.leave = False  # an unfinished bar disappears; the error message follows
            self.bar.close()
        self.bar, self.group = None, None


def _stage_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for flag, stage in _STAGE_FLAGS:
        block = {}
        if getattr(args, f"{flag}_steps") is not None:
            block["steps"] = getattr(args, f"{flag}_steps")
        if getattr(args, f"{flag}_guidance") is not None:
            block["guidance_strength"] = getattr(args, f"{flag}_guidance")
        if block:
            out[stage] = block
    return out


def _export_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"target_faces": args.faces, "texture_size": args.texture_size, "texture_format": args.texture_format,
            "alpha_mode": args.alpha_mode, "remesh": args.remesh}


def _check(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Every option checked under its flag's name and the input files read, before any model loads:
    ``(image, mask, CheckedArguments)``."""
    from .arguments import check_arguments, load_image, load_mask

    checked = check_arguments(
        args.output, pipeline=args.pipeline, pipeline_type=args.pipeline_type, seed=args.seed, steps=args.steps,
        guidance=args.guidance, samplers=_stage_overrides(args), max_num_tokens=args.max_tokens,
        export=_export_options(args), device=args.device, dtype=args.dtype, models_dir=args.models_dir,
        offline=True if args.offline else None, background=args.background, matting_model=args.rembg_model,
        vram_preset=args.vram, names=CLI_NAMES, stage_names=CLI_STAGE_NAMES)
    return load_image(args.image, "IMAGE"), load_mask(args.mask, "--mask"), checked


def _setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .logs import dedupe_root_handlers

    dedupe_root_handlers()  # huggingface_hub prints its warnings itself: once, not twice
    # our stage summaries at INFO; other libraries (HTTP clients, transformers) stay at WARNING
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)


def _fail(bars: _Bars, message: str, verbose: bool, status: int = 2) -> int:
    """Close the bars, print one ``error:`` line (the traceback too with ``-v``), return ``status``."""
    bars.close(failed=True)
    if verbose:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (``batch ...`` / ``texture ...`` run those subcommands)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:  # an image file of that name is passed as ./NAME
        from importlib import import_module

        if os.path.isfile(argv[0]):
            print(f"note: '{argv[0]}' runs the {argv[0]} subcommand; for the image file of that name write "
                  f"./{argv[0]}", file=sys.stderr)

        return import_module(SUBCOMMANDS[argv[0]][0], __package__).main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    from .errors import BackendError, InputError, Trellis2Error, WeightsError

    bars = _Bars(enabled=not args.quiet)
    try:
        from .dependencies import check_torch

        check_torch()  # a missing or too-old torch: one line with how to install the right build
        from .api import image_to_glb
        from .config import FastPathConfig

        image, mask, checked = _check(args)
        fast = FastPathConfig.for_speed(args.speed).with_attention(args.attention)
        result = image_to_glb(
            image, checked.target, pipeline=args.pipeline, pipeline_type=checked.pipeline_type, seed=checked.seed,
            samplers=checked.samplers, max_num_tokens=checked.max_num_tokens, export=checked.export,
            device=checked.device, dtype=checked.dtype, models_dir=checked.models_dir, offline=checked.offline,
            background=checked.background, mask=mask, matting_model=args.rembg_model, progress=bars,
            vram_preset=checked.vram_preset, fast=fast)
    except WeightsError as err:
        return _fail(bars, f"{err}\n\n{_WEIGHTS_HELP}", args.verbose)
    except (InputError, BackendError) as err:
        return _fail(bars, str(err), args.verbose)
    except Trellis2Error as err:  # out of memory, cancelled: not a mistake in the command
        return _fail(bars, f"{type(err).__name__}: {err}", args.verbose, 1)
    except KeyboardInterrupt:
        bars.close(failed=True)
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a file that vanished or cannot be written, a full disk, ...
        return _fail(bars, f"{type(err).__name__}: {err}", args.verbose)
    except Exception as err:  # noqa: BLE001 - one line instead of a traceback for what the options caused
        detail = "" if args.verbose else " (run with -v for the traceback)"
        return _fail(bars, f"unexpected {type(err).__name__}: {err}{detail}; if the options look right, please "
                           "report it", args.verbose)
    bars.close()
    rep, cfg = result.export, checked.export
    print(f"{rep.path}: {rep.faces} faces, {rep.vertices} vertices, {cfg.texture_size}px {cfg.texture_format} "
          f"textures, {rep.bytes / 1e6:.1f} MB ({sum(result.timings.values()):.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
