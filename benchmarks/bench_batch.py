"""Batch throughput: images per minute on 1 GPU and on N GPUs (one worker per GPU), and the scaling efficiency.

One "image" is the full-size pipeline of ``bench_pipeline.py`` with its realistic surrogate geometry (random weights,
official architectures and sampler schedules, token counts of real objects: ≈ 4 K / 20 K tokens and 2.5 M finest
decoder voxels at 1024_cascade) followed by the GLB export (``export_glb``: hole filling, clean-up, decimation to
``--faces``, UV unwrap, baking at ``--texture-size``, writing) of ``bench_export.py``'s synthetic dual-grid surface at
``--export-res`` (1024 → ≈ 3.7 M faces, as the 1024 decoder's mesh). Not included: DINOv3 conditioning (random
tokens; ≈ 1 % of an image) and reading the input image.

Every worker (a GPU) builds its models once, runs one warm-up image (compiles the fast path), waits until all workers
are ready, then takes images from a shared queue until ``--images-per-gpu`` × workers are done. The wall time from
the start signal to the last result gives images per minute; efficiency = (images/min on N) / (N × images/min on 1).

Launchers for N > 1: ``processes`` (one spawned process per GPU, a multiprocessing queue; needs nothing else) or
``ray`` (one Ray actor per GPU fed by ``trellis2_core.batch.ray_pool.Scheduler``, the scheduler of
``batch --workers ray``; needs ``pip install -r requirements-ray.txt``). 1 GPU always runs in this process, as
``python -m trellis2_core batch`` does without Ray.

    python benchmarks/bench_batch.py --device cuda --gpus 1,2 --launcher processes --json batch.json
    python benchmarks/bench_batch.py --device cpu --tiny --gpus 1,2 --images-per-gpu 1   # CPU smoke test
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def _bench_module(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module (they are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class SurrogateWorker:
    """One GPU's models, geometry and export surface; :meth:`image` runs one surrogate image end to end."""

    def __init__(self, device: str, ptype: str, mode: str, tiny: bool, export_res: int, faces: int,
                 texture_size: int) -> None:
        from trellis2_core.pipeline.stages import PipelineType
        from trellis2_core.postprocess import ExportConfig

        bp = _bench_module("bench_pipeline")
        self.bp, self.device = bp, torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.ptype, self.fast = PipelineType.parse(ptype), bp.parse_mode(mode)
        keys = {"ss"} | ({"shape_512", "shape_1024", "tex_1024"} if self.ptype.cascade else {"shape_512", "tex_512"})
        self.models = bp.build_models(self.device, tiny, keys)
        self.geo = bp.make_geometry(self.ptype, (bp._TARGETS_TINY if tiny else bp._TARGETS)[ptype], self.device)
        self.surface = None
        if export_res:
            self.surface = _bench_module("bench_export").make_blob_surface(export_res, self.device)
        self.export = ExportConfig(target_faces=faces, texture_size=texture_size)
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def image(self, seed: int, warmup: bool = False) -> dict[str, float]:
        """Seconds of one image: the pipeline's stages, then the export."""
        from trellis2_core.postprocess import export_glb

        self._sync()
        t0 = time.perf_counter()
        self.bp.run_pipeline(self.models, self.geo, self.ptype, self.fast, self.device, warmup=warmup, seed=seed)
        self._sync()
        t1 = time.perf_counter()
        faces = 0
        if self.surface is not None:
            report = export_glb(*self.surface, self.scratch / f"{seed}.glb", self.export)
            faces = report.faces
            (self.scratch / f"{seed}.glb").unlink(missing_ok=True)
        self._sync()
        t2 = time.perf_counter()
        return {"pipeline_s": t1 - t0, "export_s": t2 - t1, "total_s": t2 - t0, "faces": faces}


def _worker_args(args: argparse.Namespace) -> tuple:
    return (args.type, args.mode, args.tiny, args.export_res, args.faces, args.texture_size)


# ------------------------------------------------------------------------------------------------ launchers
def run_local(device: str, n: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """``n`` images one after the other on one device in this process."""
    t = time.perf_counter()
    worker = SurrogateWorker(device, *_worker_args(args))
    build = time.perf_counter() - t
    t = time.perf_counter()
    worker.image(0, warmup=True)
    warm = time.perf_counter() - t
    log(f"[1 x {device}] built in {build:.1f} s, warm-up {warm:.1f} s")
    images, t0 = [], time.perf_counter()
    for k in range(n):
        images.append({**worker.image(1000 + k), "worker": 0})
    wall = time.perf_counter() - t0
    del worker
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"workers": 1, "launcher": "local", "wall_s": wall, "images": images, "build_s": [build],
            "warmup_s": [warm]}


def _process_main(rank: int, device: str, wargs: tuple, threads: int, tasks: Any, results: Any, start: Any,
                  factory: Callable[..., Any] | None = None) -> None:
    """One spawned worker: build, warm up, report ready, wait for the start, then take images until a None."""
    torch.set_num_threads(threads)  # the workers share the CPU cores (decimation and other CPU work)
    try:
        t = time.perf_counter()
        worker = (factory or SurrogateWorker)(device, *wargs)
        build = time.perf_counter() - t
        t = time.perf_counter()
        worker.image(0, warmup=True)
        results.put(("ready", rank, {"build_s": build, "warmup_s": time.perf_counter() - t}))
        start.wait()
        while (seed := tasks.get()) is not None:
            results.put(("image", rank, {**worker.image(seed), "worker": rank}))
    except Exception as err:  # noqa: BLE001 - the parent prints it and stops
        results.put(("error", rank, f"{type(err).__name__}: {err}"))


def run_processes(devices: list[str], n: int, args: argparse.Namespace, log: Callable[[str], None],
                  factory: Callable[..., Any] | None = None) -> dict:
    """One spawned process per device, a shared queue of ``n`` images (``factory``: the worker class, for tests)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    tasks, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    procs = [ctx.Process(target=_process_main, args=(r, d, _worker_args(args), threads, tasks, results, start, factory),
                         daemon=True) for r, d in enumerate(devices)]
    for p in procs:
        p.start()

    def receive() -> tuple:
        """The next message; a worker that died without one (killed, crashed) is an error, not a hang."""
        while True:
            try:
                kind, rank, value = results.get(timeout=10)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"worker(s) died: {dead} (rank, exit code)") from None
                continue
            if kind == "error":
                raise RuntimeError(f"worker {rank} ({devices[rank]}): {value}")
            return kind, rank, value

    try:
        ready: dict[int, dict] = {}
        while len(ready) < len(devices):
            _, rank, value = receive()
            ready[rank] = value
        log(f"[{len(devices)} x processes] ready: " + ", ".join(
            f"{devices[r]} built {v['build_s']:.1f} s warm-up {v['warmup_s']:.1f} s" for r, v in sorted(ready.items())))
        for k in range(n):
            tasks.put(1000 + k)
        for _ in devices:
            tasks.put(None)
        images, t0 = [], time.perf_counter()
        start.set()
        while len(images) < n:
            images.append(receive()[2])
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return {"workers": len(devices), "launcher": "processes", "wall_s": wall, "images": images,
            "build_s": [ready[r]["build_s"] for r in sorted(ready)],
            "warmup_s": [ready[r]["warmup_s"] for r in sorted(ready)]}


class _RayWorker:
    """The body of one Ray actor (a GPU, or a CPU slot for the smoke test)."""

    def __init__(self, device: str, wargs: tuple, threads: int) -> None:
        self.device, self.wargs, self.worker = device, wargs, None
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPUs; say it explicitly

    def start(self) -> dict[str, float]:
        t = time.perf_counter()
        self.worker = SurrogateWorker(self.device, *self.wargs)
        build = time.perf_counter() - t
        t = time.perf_counter()
        self.worker.image(0, warmup=True)
        return {"build_s": build, "warmup_s": time.perf_counter() - t}

    def image(self, seed: int) -> dict[str, float]:
        return self.worker.image(seed)


def run_ray(count: int, gpu: bool, n: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """``count`` Ray actors (one GPU each, or one CPU each), images handed out by the batch scheduler."""
    import ray

    from trellis2_core.batch.inputs import BatchInput
    from trellis2_core.batch.ray_pool import Scheduler, WorkerLost

    own = not ray.is_initialized()
    if own:
        ray.init(address=args.ray_address or "local", include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(_REPO)}})
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // count)
        resources = {"num_gpus": 1, "num_cpus": cpus} if gpu else {"num_cpus": cpus}
        cls = ray.remote(**resources)(_RayWorker)
        actors = {f"ray:{i}": cls.remote("cuda" if gpu else "cpu", _worker_args(args), cpus) for i in range(count)}
        ready = ray.get([a.start.remote() for a in actors.values()])
        log(f"[{count} x ray] ready: " + ", ".join(f"built {v['build_s']:.1f} s warm-up {v['warmup_s']:.1f} s"
                                                   for v in ready))
        images: list[dict] = []

        def wait_one(refs: list) -> tuple:
            done, _ = ray.wait(refs, num_returns=1)
            try:
                return done[0], ray.get(done[0])
            except ray.exceptions.RayError as err:
                return done[0], WorkerLost(str(err).splitlines()[0])

        def record(item: BatchInput, outcome: Any) -> None:
            if not isinstance(outcome, dict):
                raise RuntimeError(f"image {item.seed}: {outcome}")
            images.append(outcome)

        sched = Scheduler(list(actors), lambda w, item, _a: actors[w].image.remote(item.seed), wait_one, record)
        items = [BatchInput(str(k), Path(f"{k}.png"), f"{k}.glb", 1000 + k) for k in range(n)]
        t0 = time.perf_counter()
        sched.run(items)
        wall = time.perf_counter() - t0
    finally:
        if own:
            ray.shutdown()
    return {"workers": count, "launcher": "ray", "wall_s": wall, "images": images,
            "build_s": [v["build_s"] for v in ready], "warmup_s": [v["warmup_s"] for v in ready]}


# ------------------------------------------------------------------------------------------------ report
def summarize(run: dict, base_ipm: float | None) -> dict:
    """Images per minute, median seconds per image (pipeline, export), and the efficiency against 1 worker."""
    n = len(run["images"])
    ipm = 60.0 * n / run["wall_s"] if run["wall_s"] > 0 else float("nan")
    out = {"workers": run["workers"], "launcher": run["launcher"], "images": n, "wall_s": round(run["wall_s"], 2),
           "images_per_min": round(ipm, 3),
           "median_image_s": round(statistics.median(i["total_s"] for i in run["images"]), 3),
           "median_pipeline_s": round(statistics.median(i["pipeline_s"] for i in run["images"]), 3),
           "median_export_s": round(statistics.median(i["export_s"] for i in run["images"]), 3),
           "faces": run["images"][0].get("faces", 0)}
    if base_ipm:
        out["scaling"] = round(ipm / base_ipm, 3)
        out["efficiency"] = round(ipm / (base_ipm * run["workers"]), 3)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| workers | launcher | images | wall s | images/min | s/image (pipeline + export) | scaling | "
             "efficiency |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['launcher']} | {r['images']} | {r['wall_s']:.1f} | "
                     f"{r['images_per_min']:.2f} | {r['median_image_s']:.2f} ({r['median_pipeline_s']:.2f} + "
                     f"{r['median_export_s']:.2f}) | {r.get('scaling', 1.0):.2f}x | {r.get('efficiency', 1.0):.2f} |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (GPU i for worker i) or cpu (with --tiny: smoke test)")
    ap.add_argument("--gpus", default="1,2", help="worker counts to measure, e.g. 1,2 (counts above the GPUs "
                                                  "present are skipped)")
    ap.add_argument("--launcher", choices=("processes", "ray"), default="processes",
                    help="how workers > 1 run: spawned processes, or Ray actors (pip install -r requirements-ray.txt)")
    ap.add_argument("--ray-address", default=None, help="with --launcher ray: join this cluster")
    ap.add_argument("--images-per-gpu", type=int, default=4, help="timed images per worker (default: %(default)s)")
    ap.add_argument("--type", default="1024_cascade", help="pipeline type (default: %(default)s)")
    ap.add_argument("--mode", default="fast", help="bench_pipeline mode: fast, eager, reference, fast:medium, ...")
    ap.add_argument("--export-res", type=int, default=1024,
                    help="grid of the exported synthetic surface (1024 → ~3.7 M faces; 0 skips the export)")
    ap.add_argument("--faces", type=int, default=500_000, help="decimation target of the export")
    ap.add_argument("--texture-size", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="tiny widths and token counts (CPU smoke test)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    counts = sorted({int(c) for c in args.gpus.split(",") if c.strip()})
    if not counts or counts[0] < 1 or args.images_per_gpu < 1:
        ap.error("--gpus needs counts >= 1 and --images-per-gpu >= 1")
    try:
        _bench_module("bench_pipeline").parse_mode(args.mode)  # a typo fails now, not after the build
    except (KeyError, ValueError) as err:
        ap.error(f"--mode {args.mode!r}: {err} (modes: fast, eager, reference, with -switch/+switch, @kernel, "
                 ":medium/:low)")

    def log(msg: str) -> None:
        print(msg, flush=True)

    gpu = args.device.startswith("cuda")
    available = torch.cuda.device_count() if gpu else max(counts)
    env = {"torch": torch.__version__, "device": args.device, "commit": _commit(), "argv": sys.argv[1:],
           "gpu": torch.cuda.get_device_name(0) if gpu and available else None, "gpus_present": available}
    log(f"env {env}")
    rows, runs, base = [], [], None
    for count in counts:
        if count > available:
            log(f"[{count} workers] skipped: {available} GPU(s) present")
            continue
        n = args.images_per_gpu * count
        if count == 1:
            run = run_local("cuda:0" if gpu else "cpu", n, args, log)
        elif args.launcher == "ray":
            run = run_ray(count, gpu, n, args, log)
        else:
            run = run_processes([f"cuda:{i}" if gpu else "cpu" for i in range(count)], n, args, log)
        row = summarize(run, base)
        if count == 1:
            base = row["images_per_min"]
        rows.append(row)
        runs.append(run)
        log(f"[{count} workers] {row}")
        if args.json:
            Path(args.json).write_text(json.dumps({"env": env, "rows": rows, "runs": runs}, indent=1))
    log(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
