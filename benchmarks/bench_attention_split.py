"""Does cuDNN attention lose speed to L2 misses at long sequences? Time it whole and split into head groups.

At N = 4096 cuDNN runs at ~670 TF/s on the H200, at N = 20 000 and 47 000 at ~570 (RESULTS.md). One head's K and V
take ``2·N·D·2`` bytes (10 MB at 20 K); a launch over all ``B·H`` heads at once has 240 MB of K/V in flight if the
blocks resident together belong to many heads, far over the 50 MB L2. Calling the kernel on groups of ``g`` heads
keeps fewer heads' K/V live at a time. Every variant computes the same numbers (heads are independent); this script
times each (median of ``triton.testing.do_bench``) and checks it equals the whole-batch call bit for bit.

    python benchmarks/bench_attention_split.py --json split.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_attention import dit_attention_inputs, record  # this folder is on sys.path when run as a script

SHAPES = {"4096": (2, 4096, 4096), "20000": (2, 20000, 20000), "47000": (2, 47000, 47000),
          "cross 20000x4101": (1, 20000, 4101)}


def _sdpa(q, k, v, scale):  # [B, L, H, D] views → [B, L, H, D]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          scale=scale).transpose(1, 2)


def _grouped(q, k, v, scale, heads_per_call, out):
    """One SDPA call per (batch element, head group), written into ``out``."""
    for b in range(q.shape[0]):
        for h0 in range(0, q.shape[2], heads_per_call):
            hs = slice(h0, h0 + heads_per_call)
            out[b:b + 1, :, hs] = _sdpa(q[b:b + 1, :, hs], k[b:b + 1, :, hs], v[b:b + 1, :, hs], scale)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--groups", default="12,6,4,3,2,1", help="heads per call (per batch element)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import triton.testing
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    scale = 128 ** -0.5
    res: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "shapes": {}}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for name in a.shapes.split(","):
            q, k, v, flops = dit_attention_inputs(*SHAPES[name], dev)
            whole = _sdpa(q, k, v, scale).contiguous()
            cands = {"whole": lambda: _sdpa(q, k, v, scale),
                     "whole, BHLD contiguous": (lambda qc=q.transpose(1, 2).contiguous(),
                                                kc=k.transpose(1, 2).contiguous(), vc=v.transpose(1, 2).contiguous():
                                                F.scaled_dot_product_attention(qc, kc, vc, scale=scale))}
            out = torch.empty_like(q)
            for gs in (int(x) for x in a.groups.split(",")):
                cands[f"{gs} heads/call"] = (lambda gs=gs: _grouped(q, k, v, scale, gs, out))
            row = {}
            for cname, fn in cands.items():
                o = fn()
                if o.shape != whole.shape:
                    o = o.transpose(1, 2)
                same = bool(torch.equal(o.contiguous(), whole))
                ms = triton.testing.do_bench(fn, warmup=5, rep=300, return_mode="median")
                record(row, name, cname, ms, flops, f"identical={same}", bit_identical=same)
            res["shapes"][name] = row
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
