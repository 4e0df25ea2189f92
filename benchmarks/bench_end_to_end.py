"""End-to-end benchmark of what a user waits for: ``trellis2_core.api.image_to_glb`` on a real image, per stage.

Weights: a random-weight pipeline folder in the official layout (``write_random_pipeline``, ``--size full`` ≈
16 GB; reused when complete). Geometry: random weights decode to noise, so :mod:`surrogate` makes the structure
occupancy, the cascade upsample and the shape decoder's subdivisions and outputs follow one closed surface with
realistic token counts (N_LR ≈ 3-4 K, N_HR ≈ 20 K / 47 K, 0.6-5.6 M final voxels), while every network runs at full
size; the export then sees a clean mesh of millions of faces.

Background: ``image_to_glb`` uses the image's alpha when it has one (the shared test images are RGBA: no model);
an RGB image needs a BiRefNet-interface matting model, loaded from its own remote-code folder (not part of this
library, so no random-weight copy can be written): pass ``--matting-model DIR`` to time it.

Cache states: the parent re-invokes itself (``--child``) as new processes: ``cold`` = empty compile caches
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, FLASH_ATTENTION_CUTE_DSL_CACHE_DIR, CUDA_CACHE_PATH, TMPDIR,
XDG_CACHE_HOME, TRELLIS2_CACHE all in a fresh temp folder), ``second`` = a new process on the caches the cold one
filled. Inside a process, the first run of a configuration is labelled by the process (cold / second) and an
identical later one ``warm``. ``--plan`` lists the runs of the cold child in order (``type:preset:texture``); the
second child runs ``--second-plan``. A VRAM preset change re-creates the Pipeline (the preset is fixed per
ModelStore, ``loading.residency``) and reloads the weights (timed as ``weight_loading``).

    python benchmarks/bench_end_to_end.py --pipeline /tmp/t2full --size full --device cuda --json e2e.json \\
        --plan 1024_cascade:high:2048,1024_cascade:high:2048,1024_cascade:high:4096,512:high:2048 --time-budget 500
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
for _p in (str(_REPO), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import surrogate  # noqa: E402
from trellis2_core.config import FastPathConfig  # noqa: E402
from trellis2_core.api import image_to_glb  # noqa: E402
from trellis2_core.loading.random_pipeline import is_random_pipeline, write_random_pipeline  # noqa: E402
from trellis2_core.pipeline.pipeline import Pipeline  # noqa: E402
from trellis2_core.pipeline.stages import PipelineType  # noqa: E402

CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "CUDA_CACHE_PATH",
             "TMPDIR", "XDG_CACHE_HOME", "TRELLIS2_CACHE")
_SEGMENT = {("load", 1): "check_ready", ("background", 1): "background_model", ("condition", 1): "conditioning",
            ("decode", 0): "tex", ("decode", 1): "tex_decoder", ("export:start", 0): "output_checks"}


def default_image() -> Path:
    shared = _REPO.parent / "shared" / "assets" / "images"
    found = sorted(p for p in shared.glob("*") if p.suffix.lower() in (".png", ".webp", ".jpg", ".jpeg")) \
        if shared.is_dir() else []
    return found[0] if found else _REPO / "assets" / "T.png"


def parse_plan(text: str) -> list[tuple[str, str, int]]:
    plan = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[1] not in ("high", "medium", "low") or not parts[2].isdigit():
            raise SystemExit(f"--plan item {item!r}: write type:preset:texture_size, e.g. 1024_cascade:high:2048")
        PipelineType.parse(parts[0])
        plan.append((parts[0], parts[1], int(parts[2])))
    return plan


class StageClock:
    """Progress receiver: syncs the device at every event and adds the time since the previous event to a segment;
    per segment the peak allocated/reserved VRAM (the counters are reset at each event)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, list[float]] = {}
        self.last = 0.0

    def start(self) -> None:
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.last = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self, label: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.seconds[label] = self.seconds.get(label, 0.0) + now - self.last
        self.last = now
        if self.cuda:
            peak = [torch.cuda.max_memory_allocated(self.device) / 1e9,
                    torch.cuda.max_memory_reserved(self.device) / 1e9]
            old = self.peak_gb.get(label, [0.0, 0.0])
            self.peak_gb[label] = [round(max(a, b), 3) for a, b in zip(old, peak)]
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self, stage: str, i: int, n: int) -> None:
        if stage == "load" and i == 0:
            self.mark("background_alpha+arg_checks")
        elif (stage, min(i, 1)) in _SEGMENT and (i == 0 or i == n):
            self.mark(_SEGMENT[(stage, min(i, 1))])
        elif i == 0:
            self.mark(f"before_{stage}")
        else:  # sampler steps ('sparse_structure', 'shape', 'shape_lr', 'shape_hr', 'tex') and export sub-stages
            self.mark(stage)


def fast_config(args: argparse.Namespace) -> FastPathConfig:
    """The fast path the runs use (``--speed``, ``--fused-min-rows``)."""
    fast = FastPathConfig.fast(compile_blocks=args.speed == "fast")
    return dataclasses.replace(fast, fused_min_rows=args.fused_min_rows) if args.fused_min_rows else fast


def _env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "python": sys.version.split()[0],
            "triton": __import__("triton").__version__ if importlib.util.find_spec("triton") else None}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------------------ child
def _load_weights(pipe: Pipeline, ptype: PipelineType) -> None:
    for key in ptype.model_keys:
        pipe.models(key)
    pipe.image_cond_model  # noqa: B018 - loads DINOv3


def _compiled_graphs() -> int:
    """How many graphs TorchDynamo has compiled in this process (0 where nothing is compiled)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def run_child(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    out = {"process": args.child, "env": _env_info(device), "cache_env": {k: os.environ.get(k) for k in CACHE_ENV},
           "runs": []}
    deadline = args.deadline
    targets = surrogate.TARGETS_TINY if args.size == "tiny" else surrogate.TARGETS
    geometries: dict[str, surrogate.Geometry] = {}
    seen: set[tuple] = set()
    pipe, pipe_preset, last_s = None, None, 0.0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        Path(args.child_json).write_text(json.dumps(out, indent=1))

    for index, (tname, preset, tex) in enumerate(parse_plan(args.plan)):
        key = (tname, preset, tex)
        rec: dict = {"index": index, "type": tname, "vram_preset": preset, "texture_size": tex, "faces": args.faces,
                     "cache_state": "warm" if key in seen else args.child}
        if deadline and time.time() + last_s > deadline:
            rec["skipped"] = "time budget"
            out["runs"].append(rec)
            save()
            continue
        t_run = time.perf_counter()
        try:
            ptype = PipelineType.parse(tname)
            if pipe is None or pipe_preset != preset:
                pipe = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                pipe = Pipeline.from_pretrained(args.pipeline, device=device, vram_preset=preset, offline=True)
                pipe_preset = preset
            clock = StageClock(device)
            clock.start()
            _load_weights(pipe, ptype)
            clock.mark("weight_loading")
            if tname not in geometries:
                geometries[tname] = surrogate.fit_geometry(ptype, targets[tname], device)
            clock.mark("surrogate_fit (not user time)")
            geo = geometries[tname]
            rec["tokens"] = geo.tokens
            clock.start()  # the run's peak VRAM: from here (the weights stay resident under 'high')
            t0 = time.perf_counter()
            with surrogate.inject(geo, clock.mark):
                res = image_to_glb(args.image, out_dir / f"{args.child}_{index}_{tname}_{preset}_{tex}.glb",
                                   pipeline=pipe, pipeline_type=tname, seed=args.seed, device=str(device),
                                   export={"texture_size": tex, "target_faces": args.faces},
                                   background=args.background, matting_model=args.matting_model, progress=clock,
                                   fast=fast_config(args))
            rec["total_s"] = time.perf_counter() - t0
            rec["stages_s"] = {k: round(v, 4) for k, v in clock.seconds.items()}
            rec["stage_peak_gb"] = clock.peak_gb
            if device.type == "cuda":
                peaks = [p for k, p in clock.peak_gb.items() if not k.startswith(("weight", "surrogate"))]
                rec["peak_allocated_gb"] = max(p[0] for p in peaks)
                rec["peak_reserved_gb"] = max(p[1] for p in peaks)
            rec["api_timings_s"] = res.timings
            rec["glb"] = str(res.path)
            rec["glb_bytes"] = res.path.stat().st_size
            rec["faces_out"] = int(res.export.faces)
            rec["decoded_faces"] = int(res.pipeline.decoded.meshes[0].num_faces)
            rec["n_hr"] = int(res.pipeline.shape.slat.num_voxels)
            # graphs torch.compile has made in this process so far: a warm repeat must add none (a growing count
            # means recompiles inside the timed runs, as a global module hook once caused)
            rec["compiled_graphs"] = _compiled_graphs()
            del res  # its latents and meshes must not stay on the device across runs
            seen.add(key)
        except Exception as err:  # one failing configuration must not lose the others
            rec["error"] = f"{type(err).__name__}: {err}"
            rec["traceback"] = traceback.format_exc()
            print(f"[{args.child}] {key}: FAILED {rec['error']}", flush=True)
        last_s = time.perf_counter() - t_run
        rec["wall_s"] = last_s
        out["runs"].append(rec)
        print(f"[{args.child}] {key} {rec['cache_state']}: " + (
            f"total {rec['total_s']:.2f} s, peak {rec.get('peak_allocated_gb', 0):.2f} GB, "
            f"{rec['compiled_graphs']} compiled graphs so far" if "total_s" in rec
            else rec.get("error", rec.get("skipped", ""))), flush=True)
        save()
    return 0


# ------------------------------------------------------------------------------------------------ parent
def _spawn(args: argparse.Namespace, label: str, plan: str, cache: Path, deadline: float, json_path: Path) -> dict:
    env = dict(os.environ)
    for name in CACHE_ENV:
        folder = cache / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    env["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", label, "--child-json", str(json_path),
           "--plan", plan, "--pipeline", str(args.pipeline), "--size", args.size, "--device", args.device,
           "--speed", args.speed, "--fused-min-rows", str(args.fused_min_rows),
           "--image", str(args.image), "--faces", str(args.faces), "--seed", str(args.seed),
           "--background", args.background, "--out-dir", str(args.out_dir), "--deadline", str(deadline)]
    if args.matting_model:
        cmd += ["--matting-model", args.matting_model]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=max(30.0, deadline - time.time() + 60), cwd=str(_REPO))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    result = json.loads(json_path.read_text()) if json_path.is_file() else {"process": label, "runs": []}
    result.update(rc=rc, process_wall_s=time.perf_counter() - t0)
    return result


def table(results: dict) -> str:
    runs = [(p["process"], r) for p in results["processes"] for r in p["runs"] if "stages_s" in r]
    if not runs:
        return "(no successful run)"
    stages: list[str] = []
    for _, r in runs:
        stages += [s for s in r["stages_s"] if s not in stages]
    head = [f"{proc}#{r['index']} {r['type']} {r['vram_preset']} {r['texture_size']} ({r['cache_state']})"
            for proc, r in runs]
    lines = ["| stage (s) | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{r['stages_s'].get(s, 0):.2f}" for _, r in runs) + " |")
    lines.append("| **total (image_to_glb)** | " + " | ".join(f"**{r['total_s']:.2f}**" for _, r in runs) + " |")
    for k in ("peak_allocated_gb", "peak_reserved_gb", "decoded_faces", "faces_out", "n_hr", "compiled_graphs"):
        lines.append(f"| {k} | " + " | ".join(str(r.get(k, "-")) for _, r in runs) + " |")
    for p in results["processes"]:
        for r in p["runs"]:
            if "error" in r or "skipped" in r:
                lines.append(f"- {p['process']}#{r['index']} {r['type']}:{r['vram_preset']}:{r['texture_size']}: "
                             f"{r.get('error') or 'skipped (' + r['skipped'] + ')'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="/tmp/t2full", help="random pipeline folder (written when incomplete)")
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--weights-seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image", default=None, help="default: first image of ../shared/assets/images, else T.png")
    ap.add_argument("--background", default="auto")
    ap.add_argument("--matting-model", default=None, help="BiRefNet-interface folder (for RGB images)")
    ap.add_argument("--types", default="1024_cascade")
    ap.add_argument("--presets", default="high")
    ap.add_argument("--texture-sizes", default="2048")
    ap.add_argument("--faces", type=int, default=500_000)
    ap.add_argument("--speed", choices=("fast", "fast_no_compile"), default="fast",
                    help="FastPathConfig.fast() with or without the compiled DiT blocks")
    ap.add_argument("--fused-min-rows", type=int, default=0,
                    help="FastPathConfig.fused_min_rows (0: the default): model calls of fewer rows use the plain "
                         "kernels and cuDNN attention")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--warm-repeats", type=int, default=1, help="warm repeats of the first configuration")
    ap.add_argument("--plan", default=None, help="explicit cold-process plan: type:preset:texture,... (default: the "
                    "first config, --warm-repeats repeats, then every other --types x --presets x --texture-sizes)")
    ap.add_argument("--second-plan", default=None, help="second-process plan (default: the first config once)")
    ap.add_argument("--no-second", action="store_true", help="skip the second process")
    ap.add_argument("--time-budget", type=float, default=500.0, help="seconds for the whole command; later "
                    "configurations are skipped once a run would not fit")
    ap.add_argument("--out-dir", default=None, help="GLBs (default: a temp folder)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache-dir", default=None, help="compile caches (default: a fresh temp folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.image = Path(args.image) if args.image else default_image()
    if args.child:
        return run_child(args)

    t_start = time.time()
    deadline = t_start + args.time_budget
    args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="e2e_glb_")
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "env": _env_info(torch.device("cpu")),
                     "image": str(args.image), "processes": []}
    t0 = time.perf_counter()
    if is_random_pipeline(args.pipeline, size=args.size, seed=args.weights_seed):
        results["pipeline_write_s"] = 0.0
    else:
        write_random_pipeline(args.pipeline, size=args.size, seed=args.weights_seed)
        results["pipeline_write_s"] = time.perf_counter() - t0
    print(f"pipeline {args.pipeline} ready ({results['pipeline_write_s']:.1f} s to write)", flush=True)
    if args.plan is None:
        combos = [f"{t}:{p}:{s}" for t in args.types.split(",") for p in args.presets.split(",")
                  for s in args.texture_sizes.split(",")]
        plan = [combos[0]] * (1 + args.warm_repeats) + combos[1:]
        args.plan = ",".join(plan)
    parse_plan(args.plan)
    second = args.second_plan or args.plan.split(",")[0]
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="e2e_cache_"))
    work = Path(tempfile.mkdtemp(prefix="e2e_json_"))

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    for label, plan in (("cold", args.plan), ("second", second)):
        if label == "second" and args.no_second:
            continue
        results["processes"].append(_spawn(args, label, plan, cache, deadline, work / f"{label}.json"))
        save()
    results["wall_s"] = time.time() - t_start
    save()
    print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
