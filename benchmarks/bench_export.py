"""GLB export benchmark: synthetic dual-grid surface → fill holes → clean → decimate → unwrap → bake → write.

The surface is what the TRELLIS.2 mesher makes: a blobby implicit surface (smooth union of spheres and a torus with
fine bumps) voxelised at ``--res``; every voxel crossed by the surface is active, its dual vertex is the mean of the
surface crossings on its 12 edges, and quads join the four voxels around every crossed grid edge
(``flexible_dual_grid_to_mesh``, §8.1: closed, unoriented, ~3.6·res² faces). The PBR voxel shell is the same
active voxels with smooth synthetic attributes. The same decimated mesh is also unwrapped by plain
``xatlas.parametrize`` for comparison (``--skip-xatlas`` to skip; it takes minutes at 200 k faces).

    python benchmarks/bench_export.py                      # ~0.93 M faces → 200 k, 2048², CPU, with xatlas
    python benchmarks/bench_export.py --device cuda --faces 500000 --skip-xatlas
    python benchmarks/bench_export.py --res 256 --faces 100000 --texture-size 1024 --remesh --skip-xatlas
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trellis2_core.mesh.mesher import flexible_dual_grid_to_mesh  # noqa: E402
from trellis2_core.mesh.types import Mesh, PbrVoxels  # noqa: E402

_BLOCK = 8  # narrow-band block size in voxels


def _blob_sdf(p: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance of the synthetic object at world points ``p`` [..., 3] (Lipschitz < 1.5)."""
    def sphere(c, r):
        return (p - torch.tensor(c, device=p.device)).norm(dim=-1) - r

    q = p - torch.tensor((0.0, 0.0, 0.25), device=p.device)
    ring = torch.sqrt((torch.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2) - 0.16) ** 2 + q[..., 2] ** 2) - 0.05
    parts = [sphere((0.0, 0.0, -0.05), 0.25), sphere((0.15, 0.1, 0.15), 0.15), sphere((-0.18, -0.1, 0.1), 0.12), ring]
    d = parts[0]
    for e in parts[1:]:  # polynomial smooth union, k = 0.05
        h = (0.5 + 0.5 * (e - d) / 0.05).clamp(0, 1)
        d = e * (1 - h) + d * h - 0.05 * h * (1 - h)
    return d + 0.006 * torch.sin(40 * p[..., 0]) * torch.sin(40 * p[..., 1]) * torch.sin(40 * p[..., 2])


def dual_vertices(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-grid vertex and edge flags of voxels from their corner signed distances ``cv [N, 8]`` (corner
    b = 4i + 2j + k): vertex = mean of the surface crossings on the 12 edges, in voxel units (the centre where none
    crosses); flag per axis = the surface crosses the edge at the voxel's max corner in the other two axes (§8.1)."""
    n, device = cv.shape[0], cv.device
    acc = torch.zeros(n, 3, device=device)
    cnt = torch.zeros(n, device=device)
    flags = torch.zeros(n, 3, dtype=torch.bool, device=device)
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for o1 in (0, 1):
            for o2 in (0, 1):
                lo = [0, 0, 0]
                lo[others[0]], lo[others[1]] = o1, o2
                hi = list(lo)
                hi[axis] = 1
                f0, f1 = cv[:, 4 * lo[0] + 2 * lo[1] + lo[2]], cv[:, 4 * hi[0] + 2 * hi[1] + hi[2]]
                cross = (f0 < 0) != (f1 < 0)
                t = (f0 / (f0 - f1)).nan_to_num(0.5).clamp(0, 1)
                point = torch.tensor(lo, device=device, dtype=torch.float32).expand(n, 3).clone()
                point[:, axis] = t
                acc += torch.where(cross[:, None], point, 0.0)
                cnt += cross
                if o1 == 1 and o2 == 1:
                    flags[:, axis] = cross
    return torch.where(cnt[:, None] > 0, acc / cnt.clamp_min(1)[:, None], 0.5), flags


def make_blob_surface(res: int, device: str | torch.device = "cpu") -> tuple[Mesh, PbrVoxels]:
    """Dual-grid mesh (§8.1) of the synthetic object at grid ``res`` (a multiple of 8) and its PBR voxel shell."""
    if res % _BLOCK:
        raise ValueError(f"res must be a multiple of {_BLOCK}, got {res}")
    nb = res // _BLOCK
    g = torch.arange(nb, device=device, dtype=torch.float32)
    blocks = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    near = _blob_sdf((blocks + 0.5) * _BLOCK / res - 0.5).abs() < 1.5 * math.sqrt(3) / 2 * _BLOCK / res + 2.0 / res
    blocks = blocks[near].to(torch.int64)  # [NB, 3]
    ticks = torch.arange(_BLOCK + 1, device=device)
    corner = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    sdf = _blob_sdf((blocks[:, None] * _BLOCK + corner).to(torch.float32) / res - 0.5)
    sdf = sdf.view(-1, _BLOCK + 1, _BLOCK + 1, _BLOCK + 1)
    bits = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]  # cell corner b = 4i + 2j + k
    cv = torch.stack([sdf[:, i:i + _BLOCK, j:j + _BLOCK, k:k + _BLOCK] for i, j, k in bits], -1)  # [NB,8,8,8,8]
    neg = cv < 0
    active = neg.any(-1) & ~neg.all(-1)
    idx = active.nonzero()
    coords = blocks[idx[:, 0]] * _BLOCK + idx[:, 1:]
    cv = cv[active]  # [N, 8]
    vertices, flags = dual_vertices(cv)
    mesh = flexible_dual_grid_to_mesh(coords.to(torch.int32), vertices, flags,
                                      torch.ones(coords.shape[0], 1, device=device), res)
    c = (coords.to(torch.float32) + 0.5) / res - 0.5
    attrs = torch.cat((0.5 + 0.5 * torch.sin(12 * c + torch.tensor((0.0, 2.0, 4.0), device=device)),
                       (torch.sin(25 * c[:, :1]) > 0).float(),  # metallic stripes
                       0.5 + 0.4 * torch.cos(15 * c[:, 1:2]),  # roughness
                       torch.ones_like(c[:, :1])), dim=1)  # alpha
    return mesh, PbrVoxels(coords.to(torch.int32), attrs.contiguous(), res)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_export(mesh: Mesh, voxels: PbrVoxels, faces: int, size: int, fmt: str, out: Path | None,
               remesh: bool = False, peaks_gb: dict[str, float] | None = None):
    """One export, stage by stage; returns (timings, atlas, textures). ``closest`` times the closest-point
    projection of every covered texel onto the original surface alone (it is also part of ``bake``). On CUDA,
    ``peaks_gb`` (if given) receives each stage's peak allocated memory in GB, its inputs included."""
    from trellis2_core.postprocess import (TriangleGrid, bake_pbr_textures, clean_mesh, decimate_mesh, fill_holes,
                                           remesh_narrow_band, remove_unreferenced_vertices, unwrap_uv,
                                           vertex_normals, write_glb)
    from trellis2_core.postprocess.bake import PROJECTION_RADIUS_VOXELS, project_to_surface, rasterize_positions
    device = mesh.vertices.device
    times: dict[str, float] = {}
    cuda = device.type == "cuda"

    def stage(name, fn):
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        value = fn()
        _sync(device)
        times[name] = time.perf_counter() - t
        if cuda and peaks_gb is not None:
            peaks_gb[name] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        return value

    original = stage("fill_holes", lambda: fill_holes(mesh))
    grid = stage("closest_grid", lambda: TriangleGrid(original.vertices, original.faces))
    if remesh:
        work = stage("remesh", lambda: remesh_narrow_band(original, voxels.resolution, grid=grid))
        work = stage("decimate", lambda: decimate_mesh(work, faces))
        work = stage("clean", lambda: remove_unreferenced_vertices(clean_mesh(work, orient=False))[0])
    else:
        work = stage("clean", lambda: clean_mesh(original, 1e-5, orient=False))
        work = stage("decimate", lambda: decimate_mesh(work, faces))
        work = stage("clean+orient", lambda: remove_unreferenced_vertices(clean_mesh(work))[0])
    atlas = stage("unwrap", lambda: unwrap_uv(work, size))
    _, points = rasterize_positions(atlas.uvs, atlas.faces, atlas.vertices, size)
    stage(f"closest ({points.shape[0] / 1e6:.2f} M texels)",
          lambda: project_to_surface(points, grid, PROJECTION_RADIUS_VOXELS / voxels.resolution))
    tex = stage("bake", lambda: bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, voxels, size,
                                                  surface=grid))
    if out is not None:
        normals = vertex_normals(work)[atlas.vmap]
        stage("write_glb", lambda: write_glb(out, atlas.vertices, atlas.faces, normals, atlas.uvs, tex.base_color,
                                             tex.metallic_roughness, texture_format=fmt))
    return times, work, atlas, tex


def unwrap_breakdown(mesh: Mesh, size: int) -> dict[str, float]:
    """Seconds spent in the unwrapper's parts (clustering, projection + conservative raster, packing)."""
    from trellis2_core.postprocess import _charts, _pack
    from trellis2_core.postprocess import unwrap as mod
    device = mesh.vertices.device
    out: dict[str, float] = {}
    _sync(device)
    t = time.perf_counter()
    chart, axis, _ = _charts.cluster_charts(mesh.vertices, mesh.faces, math.radians(60.0), 0.3)
    _sync(device)
    out["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    vmap, vchart, faces_uv, local = mod._project(mesh.vertices, mesh.faces, chart, axis)
    grid = min(size, 1024, max(512, 1 << math.ceil(math.log2(math.sqrt(12 * mesh.num_faces)))))  # as unwrap_uv
    q = local[faces_uv]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    area = float((0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).abs()).sum())
    cells, _ = mod._chart_cells(local * math.sqrt(mod._FILL_GUESS * grid * grid / area), faces_uv, chart,
                                axis.shape[0])
    _sync(device)
    out["project+cells"] = time.perf_counter() - t
    t = time.perf_counter()
    _pack.pack_charts(*cells, atlas_width=grid, pad=1)
    out["pack"] = time.perf_counter() - t
    return out


def xatlas_reference(mesh: Mesh, size: int):
    """Plain ``xatlas.parametrize`` on the same mesh: (seconds, uvs, faces)."""
    import xatlas

    v = mesh.vertices.cpu().numpy()
    f = mesh.faces.cpu().numpy().astype("uint32")
    t = time.perf_counter()
    _, indices, uvs = xatlas.parametrize(v, f)
    return time.perf_counter() - t, torch.from_numpy(uvs), torch.from_numpy(indices.astype("int32"))


def island_minority_flips(uvs: torch.Tensor, faces: torch.Tensor) -> int:
    """UV triangles wound against the majority of their UV island (islands: faces sharing UV vertices).

    xatlas may mirror whole charts (harmless for colour textures), so a global sign count would be misleading.
    """
    from trellis2_core.postprocess._graph import union_find

    f = faces.long()
    q = uvs.double()[f]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    neg = ((d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) <= 0).long()
    corner_face = torch.arange(f.shape[0]).repeat_interleave(3)
    first = torch.full((uvs.shape[0],), f.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, f.reshape(-1), corner_face, "amin")
    root, _ = union_find(f.shape[0], corner_face, first[f.reshape(-1)])
    n_neg = torch.zeros(f.shape[0], dtype=torch.int64).index_add_(0, root, neg)
    n_all = torch.zeros(f.shape[0], dtype=torch.int64).index_add_(0, root, torch.ones_like(neg))
    return int(torch.minimum(n_neg, n_all - n_neg).sum())


def coverage(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> float:
    from trellis2_core._kernels import load

    load()
    from trellis2_kernels.uv_raster import uv_raster

    return float((uv_raster((uvs.float() * size).contiguous(), faces.int().contiguous(), size, size) >= 0)
                 .float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=512, help="grid of the synthetic surface (512 → ~0.93 M faces)")
    ap.add_argument("--faces", type=int, default=200_000, help="decimation target (faces)")
    ap.add_argument("--texture-size", type=int, default=2048)
    ap.add_argument("--format", choices=("png", "webp"), default="png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--skip-xatlas", action="store_true")
    ap.add_argument("--remesh", action="store_true", help="narrow-band DC remesh before decimation (§9.2 branch A)")
    ap.add_argument("--no-write", action="store_true", help="skip the GLB writing stage")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs after one warm-up (GPU) / none (CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from trellis2_core.postprocess import count_flipped

    t = time.perf_counter()
    mesh, voxels = make_blob_surface(args.res, device)
    print(f"synthetic surface: res {args.res}, {mesh.num_faces} faces, {mesh.num_vertices} vertices, "
          f"{voxels.coords.shape[0]} voxels ({time.perf_counter() - t:.1f} s to build)")
    with tempfile.TemporaryDirectory() as tmp:
        out = None if args.no_write else Path(tmp) / "bench.glb"
        runs = args.repeat + (1 if device.type == "cuda" else 0)
        for i in range(runs):
            peaks: dict[str, float] = {}
            times, work, atlas, tex = run_export(mesh, voxels, args.faces, args.texture_size, args.format, out,
                                                 remesh=args.remesh, peaks_gb=peaks)
            if device.type == "cuda" and i == 0:
                continue  # warm-up (Triton compile, allocator)
            flipped = count_flipped(atlas.uvs, atlas.faces)
            print(f"\n| stage | seconds |\n|---|---|")
            for k, v in times.items():
                print(f"| {k}{' (also inside bake, not in the total)' if k.startswith('closest (') else ''} | "
                      f"{v:.3f} |")
            total = sum(v for k, v in times.items() if not k.startswith("closest ("))
            print(f"| **total** | **{total:.3f}** |")
            if peaks:
                print("peak allocated GB per stage: " + ", ".join(f"{k} {v}" for k, v in peaks.items()))
            print(f"\nfaces {work.num_faces}, charts {atlas.num_charts}, atlas coverage {tex.coverage:.3f}, "
                  f"UV utilisation {atlas.utilization:.3f}, flipped UV triangles {flipped}")
        if out is not None:  # the public one-call API on the same input (includes validation and all clean-ups)
            from trellis2_core.postprocess import ExportConfig, export_glb

            cfg = ExportConfig(target_faces=args.faces, texture_size=args.texture_size, texture_format=args.format,
                               remesh=args.remesh)
            _sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device) / 1e9
            t = time.perf_counter()
            report = export_glb(mesh, voxels, out, cfg)
            _sync(device)
            peak = ""
            if device.type == "cuda":
                peak = (f"; peak {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB allocated / "
                        f"{torch.cuda.max_memory_reserved(device) / 1e9:.2f} GB reserved, inputs {base:.2f} GB")
            print(f"export_glb end to end: {time.perf_counter() - t:.3f} s ({report.bytes / 1e6:.1f} MB GLB, "
                  f"coverage {report.atlas_coverage:.3f}{peak})")
        parts = unwrap_breakdown(work, args.texture_size)
        print("unwrap parts (s): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
        if not args.skip_xatlas:
            secs, uvs, faces = xatlas_reference(work.to("cpu"), args.texture_size)
            cov = coverage(uvs, faces, args.texture_size)
            flips = island_minority_flips(uvs, faces)
            print(f"\nplain xatlas.parametrize on the same {work.num_faces}-face mesh: {secs:.1f} s, atlas coverage "
                  f"{cov:.3f}, UV triangles flipped within their island {flips}; "
                  f"our unwrap is {secs / times['unwrap']:.1f}x faster")


if __name__ == "__main__":
    main()
