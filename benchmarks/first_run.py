"""What the first generation of a new process costs, and where that time goes.

For each ``--modes`` entry (``bench_pipeline.py`` mode names, e.g. ``fast``, ``fast-compile_blocks+cuda_graphs``)
the parent starts child processes with their own compile caches (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``,
``FLASH_ATTENTION_CUTE_DSL_CACHE_DIR`` under one fresh folder per mode):

* ``cold``: empty caches (a first-ever run on this machine);
* ``second``: a new process over the caches ``cold`` filled (ComfyUI after a restart).

Each child builds the full-size models of ``bench_pipeline.py`` (random weights on the device), then runs the whole
pipeline of ``--type`` (surrogate geometry, official schedules) ``--runs`` times: run 1 is the first generation,
the best later run is "warm". During run 1 a sampling profiler (a thread reading the main thread's stack every
``--sample-ms``) attributes the wall time to TorchDynamo tracing, AOTAutograd, Inductor (code generation and
waiting for its compile workers), Triton's compiler, FlashAttention-4's CuTe-DSL compiler, or the model code, and
``torch._dynamo.utils.compile_times`` gives Dynamo's own phase totals.

    python benchmarks/first_run.py --device cuda --type 1024_cascade --modes fast,fast-compile_blocks+cuda_graphs \\
        --json first_run.json
    python benchmarks/first_run.py --device cpu --tiny --type 512 --modes eager --runs 2   # CPU smoke test
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
_CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")

# (category, path fragments); the first category found walking the stack from the outermost frame wins, so a
# Triton compile started by Inductor counts as Inductor's.
_CATEGORIES = (
    ("dynamo", ("torch/_dynamo/",)),
    ("aot_autograd", ("torch/_functorch/",)),
    ("inductor", ("torch/_inductor/",)),
    ("triton_compile", ("triton/compiler/", "triton/backends/", "triton/runtime/build")),
    ("fa4_compile", ("cutlass/", "flash_attn/cute/")),
)


class StackSampler:
    """Samples one thread's Python stack every ``interval`` seconds; counts a category per sample."""

    def __init__(self, thread_id: int, interval: float) -> None:
        self.thread_id, self.interval = thread_id, interval
        self.counts: collections.Counter[str] = collections.Counter()
        self.leaves: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            files = []
            leaf = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
            while frame is not None:
                files.append(frame.f_code.co_filename.replace(os.sep, "/"))
                frame = frame.f_back
            category = "model_code"
            for name, fragments in _CATEGORIES:
                if any(frag in f for f in files for frag in fragments):
                    category = name
                    break
            self.counts[category] += 1
            if category == "model_code":
                self.leaves[leaf] += 1

    def seconds(self) -> dict[str, Any]:
        return {"by_category_s": {k: round(v * self.interval, 2) for k, v in self.counts.most_common()},
                "model_code_leaves_s": {k: round(v * self.interval, 2) for k, v in self.leaves.most_common(15)}}


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import bench_pipeline as bp  # benchmarks/ is on sys.path
    from trellis2_core.pipeline.stages import PipelineType

    device = torch.device(args.device)
    out: dict[str, Any] = {"mode": args.mode, "state": args.state, "type": args.type,
                           "cache_env": {k: os.environ.get(k) for k in _CACHE_ENV}}
    t0 = time.perf_counter()
    ptype = PipelineType.parse(args.type)
    keys = {"ss"} | ({"shape_512", "shape_1024", "tex_1024"} if ptype.cascade else {"shape_512", "tex_512"})
    models = bp.build_models(device, args.tiny, keys)
    out["build_s"] = round(time.perf_counter() - t0, 2)
    geo = bp.make_geometry(ptype, (bp._TARGETS_TINY if args.tiny else bp._TARGETS)[args.type], device)
    fast = bp.parse_mode(args.mode)
    runs = []
    for i in range(args.runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        if i == 0 and args.sample_ms > 0:
            with StackSampler(threading.get_ident(), args.sample_ms / 1e3) as sampler:
                r = bp.run_pipeline(models, geo, ptype, fast, device, warmup=False)
            out["first_run_profile"] = sampler.seconds()
        else:
            r = bp.run_pipeline(models, geo, ptype, fast, device, warmup=False)
        wall = time.perf_counter() - t
        runs.append({"wall_s": round(wall, 3), "stages_ms": {k: round(v, 1) for k, v in r["stages_ms"].items()},
                     "stage_peak_gb": r.get("stage_peak_gb", {})})
        print(f"[{args.mode} {args.state}] run {i + 1}: {wall:.2f} s", flush=True)
    out["runs"] = runs
    out["first_s"] = runs[0]["wall_s"]
    if len(runs) > 1:
        out["warm_s"] = min(r["wall_s"] for r in runs[1:])
        out["first_minus_warm_s"] = round(out["first_s"] - out["warm_s"], 2)
    try:
        from torch._dynamo.utils import compile_times
        out["dynamo_compile_times"] = compile_times(repr="csv", aggregate=True)
    except Exception as exc:  # diagnostics only
        out["dynamo_compile_times"] = f"unavailable: {exc!r}"
    from torch._dynamo.utils import counters
    out["dynamo_counters"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "inductor",
                                                                                  "aot_autograd")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--type", default="1024_cascade")
    ap.add_argument("--modes", default="fast")
    ap.add_argument("--states", default="cold,second", help="which child processes to run per mode")
    ap.add_argument("--runs", type=int, default=3, help="pipeline runs per child (run 1 = first generation)")
    ap.add_argument("--sample-ms", type=float, default=5.0, help="stack sampling interval of run 1 (0: off)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--state", default="cold", help=argparse.SUPPRESS)
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        Path(args.child_json).write_text(json.dumps(child(args), indent=1))
        return 0
    results: dict[str, Any] = {"argv": sys.argv[1:], "children": []}
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        for mode in args.modes.split(","):
            caches = Path(tmp) / mode.replace(":", "_")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            for name in _CACHE_ENV:
                env[name] = str(caches / name.lower())
            for state in args.states.split(","):
                out = Path(tmp) / f"{mode}-{state}.json".replace(":", "_")
                cmd = [sys.executable, __file__, "--child", "--device", args.device, "--type", args.type,
                       "--mode", mode, "--state", state, "--runs", str(args.runs), "--sample-ms", str(args.sample_ms),
                       "--child-json", str(out)] + (["--tiny"] if args.tiny else [])
                t = time.perf_counter()
                proc = subprocess.run(cmd, env=env)
                wall = time.perf_counter() - t
                if proc.returncode != 0 or not out.exists():
                    results["children"].append({"mode": mode, "state": state, "error": f"exit {proc.returncode}"})
                else:
                    rec = json.loads(out.read_text())
                    rec["process_wall_s"] = round(wall, 2)
                    results["children"].append(rec)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
    for rec in results["children"]:
        if "error" in rec:
            print(f"{rec['mode']:40s} {rec['state']:7s} ERROR {rec['error']}")
            continue
        prof = rec.get("first_run_profile", {}).get("by_category_s", {})
        print(f"{rec['mode']:40s} {rec['state']:7s} build {rec['build_s']:6.1f} s  first {rec['first_s']:7.2f} s  "
              f"warm {rec.get('warm_s', float('nan')):7.2f} s  first-warm {rec.get('first_minus_warm_s', 0):6.2f} s  "
              f"{prof}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
