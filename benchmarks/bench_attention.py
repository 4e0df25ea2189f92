"""Our Triton flash-attention kernel (``trellis2_kernels.attention``) against PyTorch's SDPA kernels on DiT shapes.

For each shape (12 heads × 128, bf16; ``B`` = 2 is a CFG pair) it times cuDNN and FlashAttention-2 through SDPA,
FlashAttention-4 (``flash_attn.cute``, when installed; raw and through our ``trellis2::fa4_attention`` op, which adds
the op's host cost) and every Triton configuration of ``--configs`` (``block_m x block_n x warps x stages``; ``""``
for none), median of ``--reps`` launches
after a warm-up (``triton.testing.do_bench``), and reports TFLOP/s (``4·B·H·Lq·Lk·D``). Accuracy: each kernel's max
abs error against a float32 reference on the first ``--check-rows`` query rows.

    python benchmarks/bench_attention.py --json attention.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from trellis2_core._kernels import load as load_kernels  # noqa: E402
from trellis2_core.sparse.attention import attention, fa4_available  # noqa: E402

SHAPES = {  # name: (B, Lq, Lk)
    "self 4096 B2": (2, 4096, 4096),
    "self 20000 B2": (2, 20000, 20000),
    "self 47000 B2": (2, 47000, 47000),
    "cross 20000x4101 B1": (1, 20000, 4101),
}


def dit_attention_inputs(b: int, lq: int, lk: int, device: torch.device, heads: int = 12, head_dim: int = 128):
    """Seeded bf16 ``q [B, Lq, H, D]`` and ``k``, ``v [B, Lk, H, D]`` (strided views of one packed tensor, as in the
    DiT's projections) and the FLOPs of one attention over them (``4·B·H·Lq·Lk·D``)."""
    g = torch.Generator(device=device).manual_seed(0)
    q = (torch.randn(b, lq, heads, head_dim, device=device, generator=g) / 4).bfloat16()
    packed = torch.randn(b, lk, 2, heads, head_dim, device=device, generator=g).bfloat16()
    return q, packed[:, :, 0], packed[:, :, 1], 4 * b * heads * lq * lk * head_dim


def record(row: dict, shape: str, label: str, ms: float, flops: int, note: str, **extra) -> None:
    """Store one kernel's median time and rate (plus ``extra``) in ``row[label]`` and print them."""
    row[label] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), **extra}
    print(f"{shape} {label}: {ms:.3f} ms {flops / ms / 1e9:.0f} TF/s {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--configs", default="128x64x8x3,128x64x8x2,128x128x8x2,128x128x8x3,128x64x4x3,64x64x4x3,"
                                         "128x64x8x3t,128x64x8x2t,128x128x8x2t,128x128x8x3t,128x64x4x3t",
                    help="block_m x block_n x warps x stages, 't' = TMA descriptor loads")
    ap.add_argument("--fa4-tiles", default="",
                    help="FlashAttention-4 SM90 tile variants to time as well: tile_m x tile_n x pv_rs x wg_overlap "
                         "(e.g. 128x128x1x1,128x176x1x1; FA4's private _flash_attn_fwd overrides)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--check-rows", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import triton.testing

    load_kernels()  # registers trellis2_kernels
    from trellis2_kernels.attention.reference import attention_reference
    from trellis2_kernels.attention.triton_impl import AttentionConfig, attention_triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    scale = 128 ** -0.5
    results: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "shapes": {}}
    configs = []
    for spec in filter(None, a.configs.split(",")):
        bm, bn, w, s = (int(x) for x in spec.rstrip("t").split("x"))
        configs.append((spec, AttentionConfig(bm, bn, w, s, tma=spec.endswith("t"))))
    for name in a.shapes.split(","):
        b, lq, lk = SHAPES[name]
        q, k, v, flops = dit_attention_inputs(b, lq, lk, dev)
        rows = min(a.check_rows, lq)
        ref = attention_reference(q[:, :rows], k, v, scale).float()
        row: dict = {}

        def sdpa(backend):
            def fn():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                          scale=scale).transpose(1, 2)
            return fn
        cands = {"cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "flash2": sdpa(SDPBackend.FLASH_ATTENTION)}
        if fa4_available():
            from flash_attn.cute import flash_attn_func
            cands["fa4"] = lambda: flash_attn_func(q, k, v, softmax_scale=scale)
            cands["fa4 (our op)"] = lambda: attention(q, k, v, scale=scale, backend="fa4")
            for spec in filter(None, a.fa4_tiles.split(",")):
                from flash_attn.cute.interface import _flash_attn_fwd
                tm, tn, rs, ol = (int(x) for x in spec.split("x"))
                cands[f"fa4 {spec}"] = (lambda tm=tm, tn=tn, rs=rs, ol=ol: _flash_attn_fwd(
                    q, k, v, softmax_scale=scale, tile_mn=(tm, tn), mma_pv_is_rs=bool(rs), intra_wg_overlap=bool(ol)))
        for spec, cfg in configs:
            cands[f"triton {spec}"] = (lambda cfg=cfg: attention_triton(q, k, v, scale, cfg))
        for cname, fn in cands.items():
            try:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn()
                out = out[0] if isinstance(out, tuple) else out
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0  # includes a run-time compile (FA4: once per config)
                err = float((out[:, :rows].float() - ref).abs().max())
                ms = triton.testing.do_bench(fn, warmup=3, rep=a.reps * 10, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a config that fails to compile is reported, not fatal
                row[cname] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                print(f"{name} {cname}: FAILED {row[cname]['error']}", flush=True)
                continue
            record(row, name, cname, ms, flops, f"err {err:.2e} (first call {first_s:.2f} s)", max_err=err,
                   first_call_s=round(first_s, 3))
        results["shapes"][name] = row
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
