"""Benchmark: submanifold sparse conv and neighbour map on decoder-like voxel sets (Triton vs PyTorch reference).

Voxel sets are thin sphere shells at 64^3 ... 1024^3 (the N voxels nearest to a sphere whose radius makes the shell
about 1.43 voxels thick, i.e. ~14.3 active neighbours of 27 per voxel, the density implied by the FlexGEMM numbers of
spec performance.md §2.3), the 1024-decoder hierarchy L0..L4 with both the Ci->Ci conv and the Ci->4Ci C2S conv1.

    python benchmarks/bench_sparse_conv.py --device cuda --dtype float16 --json out.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]

# level: (grid resolution, N, channels, convs as (Ci, Co), FlexGEMM best-column ms per conv, perf.md §2.3)
LEVELS = {
    "L0": (64, 11_300, [(1024, 1024), (1024, 4096)], [1.41, 4.81]),
    "L1": (128, 45_000, [(512, 512), (512, 2048)], [1.36, 4.85]),
    "L2": (256, 180_000, [(256, 256), (256, 1024)], [1.16, 3.84]),
    "L3": (512, 687_000, [(128, 128), (128, 512)], [1.21, 3.63]),
    "L4": (1024, 2_500_000, [(64, 64)], [1.70]),
}


def load_kernels():
    """Import ``kernels/`` as ``trellis2_kernels`` (the install name) from this checkout."""
    if "trellis2_kernels" not in sys.modules:
        root = _REPO / "kernels" / "trellis2_kernels"
        spec = importlib.util.spec_from_file_location("trellis2_kernels", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["trellis2_kernels"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["trellis2_kernels"]


def shell_coords(res: int, n: int, device: torch.device, shape: str = "sphere",
                 thickness: float = 1.43) -> torch.Tensor:
    """The ``n`` voxels of a ``res``^3 grid closest to a sphere (or a blobby closed surface), batch 0, raster order.

    The radius is chosen so that ``n`` voxels make a shell ``thickness`` voxels thick.
    """
    centre = (res - 1) / 2
    r0 = min(math.sqrt(n / (4 * math.pi * thickness)), 0.48 * res)
    ax = torch.arange(res, device=device, dtype=torch.float32) - centre
    keep_c, keep_d = [], []
    slab = max(1, (1 << 24) // (res * res))
    for x0 in range(0, res, slab):
        x = ax[x0:x0 + slab].view(-1, 1, 1)
        d = torch.sqrt(x * x + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2)
        if shape == "blob":
            u = math.pi * 3 / res
            d = d - 0.08 * r0 * torch.sin(u * x) * torch.sin(u * ax.view(1, -1, 1)) * torch.sin(u * ax.view(1, 1, -1))
        dist = (d - r0).abs()
        sel = torch.nonzero(dist < 3.0)
        keep_d.append(dist[sel[:, 0], sel[:, 1], sel[:, 2]])
        sel[:, 0] += x0
        keep_c.append(sel)
    coords, dist = torch.cat(keep_c), torch.cat(keep_d)
    if coords.shape[0] < n:
        raise ValueError(f"shell at res {res} has only {coords.shape[0]} voxels < {n}")
    pick = torch.sort(torch.topk(dist, n, largest=False).indices).values  # keep raster order
    coords = coords[pick].to(torch.int32)
    return torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1).contiguous()


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    import triton

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--levels", default="L0,L1,L2,L3,L4")
    ap.add_argument("--shape", default="sphere", choices=["sphere", "blob"])
    ap.add_argument("--no-reference", action="store_true", help="skip timing the PyTorch reference conv")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args()

    k = load_kernels()
    from trellis2_kernels.neighbor_map import build_neighbor_map
    from trellis2_kernels.submconv import prepare_submconv, submconv
    from trellis2_kernels.submconv.configs import select_config
    from trellis2_kernels.submconv.triton_impl import tile_offsets

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    tri, ref = k.KernelPolicy("triton"), k.KernelPolicy("reference")
    import triton

    info = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
            "dtype": args.dtype, "shape": args.shape, "rows": []}
    print(f"# {info['device']}  torch {info['torch']}  triton {info['triton']}  {args.dtype}  {args.shape}")
    hdr = (f"{'lvl':3} {'N':>9} {'nbrs':>5} {'conv':>10} {'ours ms':>8} {'TF/s':>5} {'ref ms':>8} {'x ref':>6} "
           f"{'FG ms':>6} {'FG/us':>6} {'ok':>4} | {'map ms':>7} {'map ref':>8} {'plan ms':>7} {'path':>10} "
           f"{'rel err':>7}")
    lines = []
    for name in args.levels.split(","):
        res, n, convs, fg = LEVELS[name]
        gen = torch.Generator(device=dev).manual_seed(0)
        coords = shell_coords(res, n, dev, args.shape)
        t_map = bench(lambda: build_neighbor_map(coords, policy=tri))
        t_map_ref = bench(lambda: build_neighbor_map(coords, policy=ref), warmup=5, rep=20)
        nbr = build_neighbor_map(coords, policy=tri)
        if not torch.equal(nbr, build_neighbor_map(coords, policy=ref)):
            raise SystemExit(f"{name}: Triton neighbour map differs from the reference")
        pairs = int((nbr >= 0).sum())

        def fresh_plan():
            p = prepare_submconv(nbr, policy=tri)
            for bn in (64, 128):
                tile_offsets(p, bn)
            return p

        t_plan = bench(fresh_plan, warmup=5, rep=20)
        plan = prepare_submconv(nbr, policy=tri)
        for (ci, co), fg_ms in zip(convs, fg):
            cfg = select_config(n, ci, co, dtype, dev)
            path = "mm" if cfg.method == "explicit" else f"{cfg.block_n}x{cfg.block_co}x{cfg.block_k}"
            feats = torch.randn(n, ci, device=dev, generator=gen).to(dtype)
            w = (torch.randn(co, 3, 3, 3, ci, device=dev, generator=gen) / math.sqrt(27 * ci)).to(dtype)
            b = torch.randn(co, device=dev, generator=gen).to(dtype)
            out = submconv(feats, plan, w, b, policy=tri)
            exact = submconv(feats.float(), plan, w.float(), b.float(), policy=ref)
            rel = float((out.float() - exact).norm() / exact.norm())
            t = bench(lambda: submconv(feats, plan, w, b, policy=tri))
            t_ref = float("nan") if args.no_reference else bench(
                lambda: submconv(feats, plan, w, b, policy=ref), warmup=5, rep=30)
            tflops = 2 * pairs * ci * co / t / 1e9
            row = dict(level=name, n=n, res=res, avg_neighbors=pairs / n, ci=ci, co=co, ms=t, tflops=tflops,
                       ref_ms=t_ref, speedup_vs_ref=t_ref / t, flexgemm_ms=fg_ms, pass_flexgemm=t <= fg_ms,
                       rel_err=rel, map_ms=t_map, map_ref_ms=t_map_ref, plan_ms=t_plan, config=cfg.__dict__)
            info["rows"].append(row)
            lines.append(f"{name:3} {n:9d} {pairs / n:5.2f} {f'{ci}->{co}':>10} {t:8.3f} {tflops:5.0f} {t_ref:8.2f} "
                         f"{t_ref / t:6.1f} {fg_ms:6.2f} {fg_ms / t:6.2f} {'PASS' if t <= fg_ms else 'FAIL':>4} | "
                         f"{t_map:7.3f} {t_map_ref:8.3f} {t_plan:7.3f} {path:>10} {rel:7.1e}")
            print(lines[-1], flush=True)
            del feats, w, b, out, exact
        del plan, nbr, coords
        torch.cuda.empty_cache()
    print()
    print(hdr)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
