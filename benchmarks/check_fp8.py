"""fp8 block GEMMs on the GPU: is ``torch._scaled_mm`` right, and is it faster than bf16 ``F.linear`` on DiT shapes?

For every DiT linear shape (K, N) ∈ {(1536, 4608) qkv, (1536, 1536) out/q, (1536, 8192) fc1, (8192, 1536) fc2} and
token count M ∈ {4096, 8192, 40000} (bf16 activations with one outlier channel, weights ~ N(0, 1/K), bias):

* accuracy: the ``_scaled_mm`` path (``trellis2_kernels.fp8_linear.scaled_mm_impl``) against the PyTorch emulation
  (``reference.py``, same quantisation, fp32 product): relative Frobenius and max abs error (expect ≲ 0.4 %, the bf16
  output rounding); and both fp8 and bf16 against the fp32 product of the bf16 operands (fp8 ≈ 2–4 %);
* speed (``triton.testing.do_bench`` medians): bf16 ``F.linear``; the fp8 GEMM alone on pre-quantised operands (the
  ceiling); ``fp8_linear`` eager and ``torch.compile``'d (quantising activations and weight on every call, as the
  fast path does); and compiled with the weight quantised once (what a per-stage weight cache would give).

Every measurement is guarded: an error is printed and recorded, and the rest continues. About a minute on an H100.

    python benchmarks/check_fp8.py --device cuda --json fp8.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from trellis2_core._kernels import load  # noqa: E402

load()
from trellis2_kernels.dispatch import KernelPolicy  # noqa: E402
from trellis2_kernels.fp8_linear import fp8_linear, quantize_rowwise, scaled_mm_unsupported  # noqa: E402
from trellis2_kernels.fp8_linear.scaled_mm_impl import fp8_linear_scaled_mm  # noqa: E402

REF = KernelPolicy(mode="reference")
TIMINGS = ("bf16", "fp8 gemm only", "fp8 eager", "fp8 compiled", "fp8 compiled, cached w")


def _inputs(m: int, k: int, n: int, device: torch.device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device)
    x[:, 7] *= 30  # an outlier channel, as DiT activations after adaLN have
    w = torch.randn(n, k, generator=g, device=device) / k ** 0.5
    b = 0.1 * torch.randn(n, generator=g, device=device)
    return x.bfloat16(), w.bfloat16(), b.bfloat16()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _guard(rec: dict, key: str, fn: Callable[[], object], log) -> object:
    try:
        return fn()
    except Exception as err:  # keep going: one failing measurement must not lose the others
        rec.setdefault("errors", {})[key] = f"{type(err).__name__}: {err}"
        log(f"  {key}: FAILED {type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}")
        return None


def accuracy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rec: dict, log) -> None:
    exact = torch.addmm(b.float(), x.float(), w.float().t())  # fp32 product of the bf16 operands (TF32 off)
    ref = fp8_linear(x, w, b, policy=REF)
    acc = {"rel_bf16_vs_fp32": _rel(F.linear(x, w, b), exact), "rel_emulation_vs_fp32": _rel(ref, exact)}
    out = _guard(rec, "scaled_mm", lambda: fp8_linear_scaled_mm(x, w, b), log)
    if out is not None:
        diff = (out.float() - ref.float()).abs()
        acc.update(rel_scaled_mm_vs_emulation=_rel(out, ref), max_abs_scaled_mm_vs_emulation=float(diff.max()),
                   max_abs_ref=float(ref.float().abs().max()), rel_scaled_mm_vs_fp32=_rel(out, exact),
                   finite=bool(torch.isfinite(out).all()))
    rec["accuracy"] = acc


def speed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, compiled: dict, rec: dict, log) -> None:
    from triton.testing import do_bench

    m, k = x.shape
    n = w.shape[0]
    flop = 2.0 * m * k * n
    wq, ws = quantize_rowwise(w)
    xq, xs = quantize_rowwise(x)
    wt, ws_row = wq.t(), ws.reshape(1, n)

    fns = {
        "bf16": lambda: F.linear(x, w, b),
        "fp8 gemm only": lambda: torch._scaled_mm(xq, wt, scale_a=xs, scale_b=ws_row, bias=b,
                                                  out_dtype=torch.bfloat16),
        "fp8 eager": lambda: fp8_linear(x, w, b),
        "fp8 compiled": lambda: compiled["linear"](x, w, b),
        "fp8 compiled, cached w": lambda: compiled["cached"](x, wt, ws_row, b),
    }
    times = {}
    for name, fn in fns.items():
        ms = _guard(rec, f"time {name}", lambda fn=fn: do_bench(fn, warmup=25, rep=100, return_mode="median"), log)
        if ms is not None:
            times[name] = {"ms": float(ms), "tflops": flop / (float(ms) * 1e-3) / 1e12}
    rec["speed"] = times


def _cached_weight_linear(x: torch.Tensor, wt: torch.Tensor, ws_row: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp8 linear with the weight quantised beforehand (``wt`` [K, N] column-major fp8, ``ws_row`` [1, N])."""
    xq, xs = quantize_rowwise(x)
    return torch._scaled_mm(xq, wt, scale_a=xs, scale_b=ws_row, bias=b, out_dtype=torch.bfloat16)


def run_case(m: int, k: int, n: int, device: torch.device, seed: int, compiled: dict | None, log) -> dict:
    """Accuracy and (unless ``compiled`` is None) speed of one GEMM shape; errors are recorded, not raised."""
    rec: dict = {"m": m, "k": k, "n": n}
    x, w, b = _inputs(m, k, n, device, seed)
    rec["dispatch"] = scaled_mm_unsupported(x, w) or "scaled_mm"
    _guard(rec, "accuracy", lambda: accuracy(x, w, b, rec, log), log)
    if compiled is None:
        rec["speed_skipped"] = True
    else:
        _guard(rec, "speed", lambda: speed(x, w, b, compiled, rec, log), log)
    return rec


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(results: list[dict]) -> str:
    lines = ["| M | K | N | rel mm/emu | max abs mm/emu | fp8 rel err | bf16 rel err | "
             + " | ".join(f"{t} ms (TF/s)" for t in TIMINGS) + " | best fp8 speed-up |",
             "|---" * (8 + len(TIMINGS)) + "|"]
    for r in results:
        acc, sp = r.get("accuracy", {}), r.get("speed", {})

        def f(key: str, fmt: str) -> str:
            return format(acc[key], fmt) if key in acc else "err"

        cells = [f"{sp[t]['ms']:.3f} ({sp[t]['tflops']:.0f})" if t in sp else "err" for t in TIMINGS]
        fp8_best = min((sp[t]["ms"] for t in ("fp8 eager", "fp8 compiled") if t in sp), default=None)
        gain = f"{sp['bf16']['ms'] / fp8_best:.2f}×" if fp8_best and "bf16" in sp else "–"
        lines.append(f"| {r['m']} | {r['k']} | {r['n']} | {f('rel_scaled_mm_vs_emulation', '.2e')} | "
                     f"{f('max_abs_scaled_mm_vs_emulation', '.3g')} | {f('rel_scaled_mm_vs_fp32', '.4f')} | "
                     f"{f('rel_bf16_vs_fp32', '.4f')} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--m", default="4096,8192,40000", help="token counts")
    ap.add_argument("--shapes", default="1536x4608,1536x1536,1536x8192,8192x1536", help="KxN list")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--no-speed", action="store_true", help="accuracy only")
    ap.add_argument("--budget-s", type=float, default=100.0, help="skip the remaining timings after this long")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        sys.exit("check_fp8.py needs a CUDA device (--device cuda); the CPU tests cover the emulation")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 comparison product must be a real fp32 product
    ms = [int(v) for v in args.m.split(",") if v]
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",") if s]
    meta = {"device": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device)),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "commit": _commit(), "command": " ".join(sys.argv)}
    log(f"{meta['device']} (sm {meta['capability']}), torch {meta['torch']}, commit {meta['commit']}")
    compiled = {"linear": torch.compile(fp8_linear, dynamic=True),
                "cached": torch.compile(_cached_weight_linear, dynamic=True)}
    t0 = time.perf_counter()
    results: list[dict] = []
    for i, (k, n) in enumerate(shapes):
        for m in ms:
            timed = not args.no_speed and time.perf_counter() - t0 <= args.budget_s
            rec = run_case(m, k, n, device, i * 100 + m, compiled if timed else None, log)
            results.append(rec)
            acc = rec.get("accuracy", {})
            log(f"M={m} K={k} N={n}: dispatch {rec['dispatch']}, mm/emu rel "
                f"{acc.get('rel_scaled_mm_vs_emulation', float('nan')):.2e}, "
                + ", ".join(f"{t} {v['ms']:.3f} ms" for t, v in rec.get("speed", {}).items())
                + f"  [{time.perf_counter() - t0:.0f} s]")
            torch.cuda.empty_cache()
    print(table(results))
    print(f"\n{meta['device']}, torch {meta['torch']}, commit {meta['commit']}; rel = relative Frobenius error; "
          "'fp8 rel err' = _scaled_mm vs the fp32 product of the bf16 operands; speed-up = bf16 / best of "
          "fp8 eager/compiled (both quantise x and w every call)")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
