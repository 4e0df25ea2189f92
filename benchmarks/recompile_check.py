"""How many graphs the compiled DiT block needs on the library's own path, and whether warm runs compile again.

``image_to_glb`` runs the stages through :meth:`Pipeline.run_from_conditioning` with progress and cancel hooks and
finite-input checks; ``bench_pipeline.py`` calls the stage functions directly. This script runs the library's path
(the ``_FiniteModels`` guard, ``StageHooks`` with progress and cancel polling, the real ``pipeline.json`` sampler
settings) on ``bench_pipeline.py``'s full-size random models held in memory (no 16 GB folder to write) and
``surrogate.py``'s geometry, several times in one process, and reports per run: wall time, per-stage seconds and
how many graphs Dynamo had compiled so far. With ``TORCH_LOGS=recompiles`` PyTorch prints why each recompile
happened.

    TORCH_LOGS=recompiles python benchmarks/recompile_check.py --device cuda --type 1024_cascade --runs 3
    python benchmarks/recompile_check.py --device cpu --tiny --type 1024_cascade --runs 2   # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))

_KEYS = {"sparse_structure_flow_model": ("flows", "ss"), "sparse_structure_decoder": ("ss_dec", None),
         "shape_slat_flow_model_512": ("flows", "shape_512"), "shape_slat_flow_model_1024": ("flows", "shape_1024"),
         "tex_slat_flow_model_512": ("flows", "tex_512"), "tex_slat_flow_model_1024": ("flows", "tex_1024"),
         "shape_slat_decoder": ("shape_dec", None), "tex_slat_decoder": ("tex_dec", None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--type", default="1024_cascade")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-cancel", action="store_true", help="no cancel polling (StageHooks.should_cancel None)")
    ap.add_argument("--no-finite", action="store_true", help="no finite-input checks (api._FiniteModels)")
    args = ap.parse_args(argv)

    import surrogate
    from trellis2_core.api import _FiniteModels
    from trellis2_core.config import FastPathConfig
    from trellis2_core.loading.random_pipeline import write_random_pipeline
    from trellis2_core.pipeline.pipeline import Conditioning, Pipeline
    from trellis2_core.pipeline.stages import PipelineType, StageHooks

    import bench_pipeline as bp  # the same module surrogate.py uses (benchmarks/ is on sys.path)
    device = torch.device(args.device)
    ptype = PipelineType.parse(args.type)
    keys = {"ss"} | ({"shape_512", "shape_1024", "tex_1024"} if ptype.cascade else {"shape_512", "tex_512"})
    models = bp.build_models(device, args.tiny, keys)

    def get(key: str) -> torch.nn.Module:
        attr, sub = _KEYS[key]
        value = getattr(models, attr)
        return value[sub] if sub is not None else value

    with tempfile.TemporaryDirectory() as tmp:
        config_dir = write_random_pipeline(Path(tmp) / "config", size="tiny")  # its pipeline.json: the samplers
        pipe = Pipeline(config_dir, get)
        cond_ch = 32 if args.tiny else 1024
        g = torch.Generator().manual_seed(0)
        cond = Conditioning(torch.randn((1, 1029, cond_ch), generator=g).to(device),
                            None if ptype.resolution == 512 else torch.randn((1, 4101, cond_ch), generator=g).to(device))
        geo = surrogate.fit_geometry(ptype, (surrogate.TARGETS_TINY if args.tiny else surrogate.TARGETS)[args.type],
                                     device)
        counters = torch._dynamo.utils.counters
        results = []
        fast = FastPathConfig.fast()
        for run in range(args.runs):
            stamps: list[tuple[str, float]] = []

            def progress(stage: str, i: int, n: int) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if not stamps or stamps[-1][0] != stage:
                    stamps.append((stage, time.perf_counter()))

            guarded = None if args.no_finite else _FiniteModels(pipe.models, lambda: "run")
            runner = Pipeline(pipe.config, guarded or pipe.models)
            t0 = time.perf_counter()
            try:
                with surrogate.inject(geo):
                    runner.run_from_conditioning(cond, seed=42, pipeline_type=ptype,
                                                 hooks=StageHooks(progress=progress, should_cancel=None if
                                                                  args.no_cancel else lambda: False),
                                                 fast=fast)
            finally:
                if guarded is not None:
                    guarded.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
            bounds = stamps + [("end", end)]
            stages = {name: round(bounds[i + 1][1] - t, 3) for i, (name, t) in enumerate(stamps)}
            rec = {"run": run + 1, "wall_s": round(end - t0, 3), "graphs": int(counters["stats"]["unique_graphs"]),
                   "stages_s": stages}
            results.append(rec)
            print(json.dumps(rec), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
