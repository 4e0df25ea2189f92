"""Texture a UV-mapped mesh with TRELLIS.2 end to end (issue 16): seconds per stage and the CUDA memory peak.

Usage::

    python benchmarks/bench_texturing.py PIPELINE IMAGE [--faces 200000] [--resolution 1024] [--texture-size 2048]
        [--device cuda] [--runs 2] [--vram high] [--out DIR]

PIPELINE is any texturing source (a folder with ``texturing_pipeline.json``; for benchmarks a full-size random one made
with ``python -c "from trellis2_core.loading.random_pipeline import write_random_pipeline as w; w('DIR', size='full')"``).
The mesh is a UV sphere with about ``--faces`` triangles and spherical UVs, so the run keeps UVs (no unwrap). The
pipeline is loaded once; every run is timed whole (first run includes weight loading and compilation), and each run
prints the library's own per-stage timings. Nothing is asserted: this measures.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the pack's root: run from anywhere


def uv_sphere(faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV sphere with about ``faces`` triangles (seams duplicated so every vertex has one UV)."""
    n = max(4, int(math.sqrt(faces / 2)))
    theta = np.linspace(0.0, math.pi, n + 1)  # rows, pole to pole
    phi = np.linspace(0.0, 2.0 * math.pi, n + 1)  # columns, seam duplicated
    t, p = np.meshgrid(theta, phi, indexing="ij")
    vertices = np.stack((np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)), -1).reshape(-1, 3)
    uvs = np.stack((p / (2.0 * math.pi), 1.0 - t / math.pi), -1).reshape(-1, 2)
    idx = np.arange((n + 1) * (n + 1)).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = np.concatenate((np.stack((a, c, b), -1).reshape(-1, 3), np.stack((b, c, d), -1).reshape(-1, 3)))
    area = np.linalg.norm(np.cross(vertices[tris[:, 1]] - vertices[tris[:, 0]],
                                   vertices[tris[:, 2]] - vertices[tris[:, 0]]), axis=1)
    tris = tris[area > 1e-12]  # pole triangles collapse
    return vertices.astype(np.float32), tris.astype(np.int64), uvs.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline")
    ap.add_argument("image")
    ap.add_argument("--faces", type=int, default=200_000)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--texture-size", type=int, default=2048)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--vram", default="high")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from trellis2_core.texturing.api import texture_mesh
    from trellis2_core.texturing.pipeline import TexturingPipeline

    cuda = args.device.startswith("cuda")
    out = Path(args.out or tempfile.mkdtemp())
    mesh = uv_sphere(args.faces)
    print(f"mesh: {len(mesh[1])} faces, {len(mesh[0])} vertices; device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else "") + f"; torch {torch.__version__}", flush=True)
    clock = time.perf_counter()
    pipe = TexturingPipeline.from_pretrained(args.pipeline, device=args.device, vram_preset=args.vram)
    print(f"pipeline set up in {time.perf_counter() - clock:.2f} s (models load lazily)", flush=True)
    for run in range(args.runs):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        clock = time.perf_counter()
        result = texture_mesh(mesh, args.image, out / f"textured_{run}.glb", pipeline=pipe, device=args.device,
                              resolution=args.resolution, texture_size=args.texture_size)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - clock
        peak = f", peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
        stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"run {run}: {wall:.2f} s{peak}; stages (s): {stages}", flush=True)
        inner = getattr(getattr(result, "texturing", None), "timings", None)
        if inner:
            print("   texturing:", ", ".join(f"{k} {v:.2f}" for k, v in dict(inner).items()), flush=True)
        print(f"   {out / f'textured_{run}.glb'}: {(out / f'textured_{run}.glb').stat().st_size / 1e6:.1f} MB",
              flush=True)


if __name__ == "__main__":
    main()
