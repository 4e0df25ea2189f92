"""Tuning sweep for the submanifold conv: times candidate launch configs per decoder shape, prints table entries.

Run on the target GPU; paste the printed ``_TABLE`` lines into ``kernels/submconv/configs.py``.

    python benchmarks/tune_submconv.py --levels L0,L1,L2,L3,L4 --json tune.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparse_conv import LEVELS, bench, load_kernels, shell_coords  # noqa: E402

# (block_n, block_co, block_k, warps, stages)
CANDIDATES = [
    (64, 64, 64, 4, 4), (64, 128, 64, 4, 3), (64, 128, 64, 4, 4), (64, 128, 64, 4, 5), (128, 64, 64, 4, 4),
    (128, 64, 32, 4, 4), (128, 128, 32, 4, 4), (128, 128, 64, 4, 2), (128, 128, 64, 4, 3), (128, 128, 64, 4, 4),
    (128, 128, 64, 4, 5), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (64, 128, 128, 4, 4),
    (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (256, 128, 64, 8, 4), (64, 256, 64, 4, 3),
    (64, 256, 64, 4, 4), (64, 256, 64, 4, 5), (64, 256, 32, 4, 5), (64, 256, 64, 8, 4), (256, 64, 64, 4, 4),
    (64, 512, 64, 8, 3), (128, 64, 64, 4, 5), (32, 256, 64, 4, 4),
]
SMEM_LIMIT = 227 * 1024


def fits(bn: int, bco: int, bk: int, stages: int, co: int, ci: int) -> bool:
    if bco > max(co, 64) or bk > max(ci, 32):
        return False
    return (bn * bk + bk * bco) * 2 * stages <= SMEM_LIMIT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--levels", default="L0,L1,L2,L3,L4")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rep", type=int, default=40)
    args = ap.parse_args()
    k = load_kernels()
    from trellis2_kernels.neighbor_map import build_neighbor_map
    from trellis2_kernels.submconv import prepare_submconv
    from trellis2_kernels.submconv import triton_impl as ti
    from trellis2_kernels.submconv.configs import ConvConfig, n_bucket

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    major = torch.cuda.get_device_capability(dev)[0]
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    tri = k.KernelPolicy("triton")
    results, table = [], []
    for name in args.levels.split(","):
        res, n, convs, fg = LEVELS[name]
        coords = shell_coords(res, n, dev)
        nbr = build_neighbor_map(coords, policy=tri)
        plan = prepare_submconv(nbr, policy=tri)
        pairs = int((nbr >= 0).sum())
        for (ci, co), fg_ms in zip(convs, fg):
            feats = torch.randn(n, ci, device=dev).to(dtype)
            w = (torch.randn(co, 3, 3, 3, ci, device=dev) / math.sqrt(27 * ci)).to(dtype)
            b = torch.randn(co, device=dev).to(dtype)
            exact = ti._explicit(feats.float(), plan, w.float(), b.float())
            timings = []

            def run(cfg, sort=True, label=None):
                t0 = time.time()
                try:
                    if cfg.method == "explicit":
                        fn = lambda: ti._explicit(feats, plan, w, b)  # noqa: E731
                    else:
                        fn = lambda: ti._implicit(feats, plan, w, b, cfg, sort)  # noqa: E731
                    out = fn()
                    err = float((out.float() - exact).norm() / exact.norm())
                    ms = bench(fn, warmup=10, rep=args.rep)
                except Exception as exc:  # noqa: BLE001 - a config that does not compile is just skipped
                    print(f"  {name} {ci}->{co} {label or cfg}: failed {type(exc).__name__}: {str(exc)[:120]}")
                    return None
                timings.append((ms, cfg, sort, err))
                print(f"  {name} {ci}->{co} {label or cfg} sort={sort}: {ms:.3f} ms err={err:.1e} "
                      f"({time.time() - t0:.1f}s)", flush=True)
                return ms

            run(ConvConfig("explicit"), label="explicit")
            for bn, bco, bk, wp, st in CANDIDATES:
                if fits(bn, bco, bk, st, co, ci):
                    run(ConvConfig("implicit", bn, bco, bk, wp, st, 1))
            best = sorted([t for t in timings if t[1].method == "implicit"], key=lambda t: t[0])[:4]
            for ms, cfg, _, _ in best:  # launch-order, split-K variants of the best four; best ones timed again
                base = (cfg.block_n, cfg.block_co, cfg.block_k, cfg.num_warps, cfg.num_stages)
                ctas = math.ceil(n / cfg.block_n) * math.ceil(co / cfg.block_co)
                if co > cfg.block_co:
                    for grp in (1, 8):
                        run(ConvConfig("implicit", *base, 1, grp))
                for sk in (2, 4):
                    if ctas < 4 * sms:
                        run(ConvConfig("implicit", *base, sk))
            top = sorted(timings, key=lambda t: t[0])[:3]
            for ms, cfg, sort, _ in top:
                run(cfg, sort, label=f"again {cfg}")
            ms, cfg, sort, err = min((t for t in timings if t[2]), key=lambda t: t[0])
            tf = 2 * pairs * ci * co / ms / 1e9
            print(f"BEST {name} N={n} {ci}->{co}: {ms:.3f} ms {tf:.0f} TF/s (FlexGEMM {fg_ms}) {cfg}", flush=True)
            table.append(f"    ({major}, {n_bucket(n)}, {ci}, {co}): " + (
                "_EXPLICIT," if cfg.method == "explicit" else
                f"_c({cfg.block_n}, {cfg.block_co}, {cfg.block_k}, {cfg.num_warps}, {cfg.num_stages}, "
                f"{cfg.split_k}, {cfg.group}),") + f"  # {ms:.3f} ms, {tf:.0f} TF/s")
            results.append(dict(level=name, n=n, ci=ci, co=co, timings=[
                dict(ms=t[0], cfg=t[1].__dict__, sort=t[2], err=t[3]) for t in timings]))
            del feats, w, b, exact
        del plan, nbr, coords
        torch.cuda.empty_cache()
    print("\n_TABLE entries:")
    print("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
