"""``python -m trellis2_core texture MESH IMAGE -o OUT.glb``: texture an existing mesh (thin argparse over
:func:`trellis2_core.texturing.api.texture_mesh`). Errors the user can fix print one line and exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trellis2_core texture",
                                description="Bake TRELLIS.2 PBR textures onto an existing mesh (GLB/OBJ/PLY); the "
                                            "output keeps its vertices, faces, UVs and placement.")
    p.add_argument("mesh", help="input mesh: .glb, .gltf, .obj or .ply with one object")
    p.add_argument("image", help="reference image (RGBA with transparent background, or any image)")
    p.add_argument("-o", "--output", required=True, help="output .glb path")
    p.add_argument("--pipeline", default="microsoft/TRELLIS.2-4B",
                   help="folder with texturing_pipeline.json + ckpts/, 'demo', or a Hugging Face id (default: "
                        "%(default)s)")
    p.add_argument("--models-dir", default=None, help="folder searched for pipelines (<dir>/trellis2/<name>)")
    p.add_argument("--resolution", type=int, default=1024, help="texturing grid: 512, 1024 or 1536 (default 1024)")
    p.add_argument("--texture-size", type=int, default=2048, help="texture side in texels (default 2048)")
    p.add_argument("--unwrap", choices=("auto", "always", "never"), default="auto",
                   help="auto: keep the mesh's UVs, unwrap only a mesh without; always: new UVs; never: error "
                        "without UVs")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--steps", type=int, default=None, help="texture sampler steps (default: the config's, 12)")
    p.add_argument("--background", default="auto", help="auto, keep, model or none (as the image-to-3D command)")
    p.add_argument("--rembg-model", default=None, help="matting model folder or HF id (background 'model')")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model precision (default: the checkpoints' own; use float32 on the CPU for speed)")
    p.add_argument("--vram", choices=("auto", "high", "medium", "low"), default="auto",
                   help="GPU memory preset: high keeps every model on the GPU, medium/low stream from RAM "
                        "(default auto)")
    p.add_argument("--texture-format", choices=("png", "webp"), default="png", help="texture encoding")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``texture`` subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from .errors import BackendError, InputError, Trellis2Error, WeightsError

    try:
        from .dependencies import check_torch

        check_torch()
        from .texturing.api import texture_mesh

        sampler = {"steps": args.steps} if args.steps is not None else None
        res = texture_mesh(args.mesh, args.image, args.output, pipeline=args.pipeline, seed=args.seed,
                           resolution=args.resolution, texture_size=args.texture_size, unwrap=args.unwrap,
                           background=args.background, matting_model=args.rembg_model, sampler=sampler,
                           device=args.device, models_dir=args.models_dir, texture_format=args.texture_format,
                           dtype=args.dtype, vram_preset=args.vram)
    except (WeightsError, InputError, BackendError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Trellis2Error as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    times = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    print(f"{res.path}: {'kept' if res.kept_uvs else 'new'} UVs, {100 * res.coverage:.1f}% texels covered ({times})")
    return 0
