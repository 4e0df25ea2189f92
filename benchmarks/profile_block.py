"""Where one full-size DiT block's time goes on the GPU: the compiled block vs the sum of its big kernels.

Builds one ``ModulatedTransformerCrossBlock`` at the released size (width 1536, 12 heads × 128, MLP 8192, q/k RMS
norm, bf16 linears, fp32 norms) with random weights, and runs it the way the fast path does at a CFG step: dense
tokens ``[B, N, 1536]``, 3-D RoPE, cached cross-attention K/V for the conditional element and the zero-context
constant for the unconditional one, ``torch.compile(dynamic=True)``, cuDNN attention. For each token count it prints

* the block's time per call (CUDA events, mean of ``--reps`` after a warm-up) for each variant (``--variants``:
  ``dynamic`` = ``torch.compile(dynamic=True)`` as the library does, ``static`` = static widths with dynamic batch,
  token and context sizes (``maybe_mark_dynamic``), with any of ``+fused_mlp``, ``+fused_qk``, ``+fused_norm``);
* the time of the block's big kernels run alone (the six GEMMs, self- and cross-attention) and their sum, i.e. what
  is left for the norms, RoPE, modulation, gates and residuals;
* the peak memory of one call, and the variants' output agreement (cosine);
* with ``--profile N``: the CUDA kernels of three calls at that token count (torch.profiler), by total time.

    python benchmarks/profile_block.py --device cuda --tokens 4096,20000,47000 --profile 20000 --json block.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from trellis2_core.config import BlockKernels, FastPathConfig  # noqa: E402
from trellis2_core.models.blocks import ModulatedTransformerCrossBlock  # noqa: E402
from trellis2_core.sparse.rope import rope_cos_sin  # noqa: E402

WIDTH, HEADS, MLP, CTX = 1536, 12, 8192, 1024


def make_block(device: torch.device, seed: int = 0) -> ModulatedTransformerCrossBlock:
    torch.manual_seed(seed)
    block = ModulatedTransformerCrossBlock(WIDTH, CTX, HEADS, MLP / WIDTH, qk_rms_norm=True, qk_rms_norm_cross=True)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
            elif "gamma" in name or (name.startswith("norm") and name.endswith("weight")):
                p.fill_(1.0).add_(torch.randn_like(p), alpha=0.05)
            else:
                p.normal_(0.0, 0.02)
    for m in block.modules():
        if isinstance(m, torch.nn.Linear):
            m.to(torch.bfloat16)
    return block.to(device)


def inputs(n: int, batch: int, device: torch.device, block: ModulatedTransformerCrossBlock):
    g = torch.Generator(device=device).manual_seed(1)
    m = 1029 if n <= 4096 else 4101
    x = torch.randn(batch, n, WIDTH, device=device, generator=g).bfloat16()
    mod = (0.1 * torch.randn(batch, 6 * WIDTH, device=device, generator=g)).bfloat16()
    ctx = torch.randn(1, m, CTX, device=device, generator=g).bfloat16()
    side = round(n ** (1 / 3)) + 2
    pos = torch.stack(torch.meshgrid(*(torch.arange(side, device=device),) * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    rope = rope_cos_sin(pos, WIDTH // HEADS)
    with torch.no_grad():
        kv = block.cross_attn.project_kv(ctx)
        const = block.cross_attn.zero_context_output() if batch > 1 else None
    return x, mod, ctx, rope, kv, const, 1


def _time(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


GEMMS_AND_ATTENTION = ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2", "self_attention", "cross_attention")


def kernels_alone(block, args, batch: int, reps: int) -> dict:
    """The block's GEMMs and attentions on tensors of the block's shapes, each timed alone."""
    x, mod, ctx, rope, kv, const, n_live = args
    n = x.shape[1]
    t = x.reshape(-1, WIDTH)
    live = x[:n_live].reshape(-1, WIDTH)
    sa, ca, mlp = block.self_attn, block.cross_attn, block.mlp.mlp
    q = torch.randn(batch, HEADS, n, 128, device=x.device, dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    kc, vc = (u.transpose(1, 2) for u in kv)
    qc = q[:n_live]
    hidden = torch.randn(t.shape[0], MLP, device=x.device, dtype=torch.bfloat16)
    qkv = torch.randn(batch, n, 3, HEADS, 128, device=x.device, dtype=torch.bfloat16)
    out = {
        "qkv": lambda: F.linear(t, sa.to_qkv.weight, sa.to_qkv.bias),
        "self_out": lambda: F.linear(t, sa.to_out.weight, sa.to_out.bias),
        "cross_q": lambda: F.linear(live, ca.to_q.weight, ca.to_q.bias),
        "cross_out": lambda: F.linear(live, ca.to_out.weight, ca.to_out.bias),
        "fc1": lambda: F.linear(t, mlp[0].weight, mlp[0].bias),
        "fc1+gelu epilogue": lambda: torch._addmm_activation(mlp[0].bias, t, mlp[0].weight.t(), use_gelu=True),
        "fc2": lambda: F.linear(hidden, mlp[2].weight, mlp[2].bias),
        "self_attention": lambda: F.scaled_dot_product_attention(q, k, v),
        "cross_attention": lambda: F.scaled_dot_product_attention(qc, kc, vc),
        "qk norm+rope kernel": lambda: sa.qk_norm_rope(qkv[:, :, 0], qkv[:, :, 1], rope, fused=True),
        "norm+modulate kernel": lambda: block.norm_modulate(block.norm1, x, mod[:, :WIDTH], mod[:, WIDTH:2 * WIDTH],
                                                            True),
    }
    ms = {name: _time(fn, reps) for name, fn in out.items()}
    ms["sum (unfused fc1)"] = sum(v for k_, v in ms.items() if k_ in GEMMS_AND_ATTENTION)
    return ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", default="4096,20000,47000")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants",
                    default="dynamic+fused_mlp,dynamic+fused_mlp+fused_qk,dynamic+fused_mlp+fused_qk+fused_norm")
    ap.add_argument("--profile", type=int, default=0, help="token count to run torch.profiler at (0: none)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type != "cuda":
        raise SystemExit("profile_block.py times CUDA kernels; run it with --device cuda on a GPU")
    block = make_block(device)
    fast = FastPathConfig.fast()
    steps = {"dynamic": torch.compile(ModulatedTransformerCrossBlock.forward, dynamic=True),
             "static": torch.compile(ModulatedTransformerCrossBlock.forward, dynamic=None)}
    results: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "tokens": {}}
    with torch.no_grad(), fast.attention_context(device):
        for n in (int(v) for v in a.tokens.split(",")):
            args = inputs(n, a.batch, device, block)
            row: dict = {"block_ms": {}, "peak_gb": {}}
            outs = {}
            for variant in a.variants.split(","):
                kind, *extras = variant.split("+")
                step = steps[kind]
                kernels = BlockKernels("auto", "fused_mlp" in extras, "fused_qk" in extras, "fused_norm" in extras)
                if kind == "static":  # static widths; batch, token and context sizes dynamic
                    for t, dims in ((args[0], (0, 1)), (args[1], (0,)), (args[2], (0, 1)), (args[3][0], (0,)),
                                    (args[3][1], (0,)), (args[4][0], (0, 1)), (args[4][1], (0, 1))):
                        for d in dims:
                            torch._dynamo.maybe_mark_dynamic(t, d)

                def call(kernels=kernels, step=step):
                    return step(block, *args, kernels)
                row["block_ms"][variant] = round(_time(call, a.reps), 3)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                outs[variant] = call().float()
                torch.cuda.synchronize()
                row["peak_gb"][variant] = round((torch.cuda.max_memory_allocated(device) - base) / 1e9, 3)
                if a.profile == n:
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(3):
                            call()
                        torch.cuda.synchronize()
                    print(f"--- N={n} B={a.batch} {variant}: CUDA kernels of 3 calls")
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
            names = list(outs)
            ref = outs[names[0]].flatten()
            row["cosine_vs_first"] = {k: round(float(F.cosine_similarity(ref, v.flatten(), dim=0)), 6)
                                      for k, v in outs.items()}
            row["kernels_ms"] = {k: round(v, 3) for k, v in kernels_alone(block, args, a.batch, a.reps).items()}
            results["tokens"][n] = row
            print(f"N={n} B={a.batch}: {json.dumps(row)}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
