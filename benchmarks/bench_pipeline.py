"""Full-size TRELLIS.2 pipeline benchmark with random weights: ``reference`` (official op mix) vs ``fast`` (ours).

What runs: the official architectures at full size (spec §4.1, §5): five flow DiTs of 1.29 B parameters with the
official dtype split (bf16 block linears, fp32 rest), the dense SS decoder and the shape/texture SC-VAE decoders
(fp16 trunks). They are built on the meta device and materialised with random weights directly on ``--device``
(no checkpoint files). Every stage uses the official schedule (§1.4: 12 steps; CFG 7.5 only inside the guidance
interval ⇒ 22 / 21 / 21 / 12 DiT forwards at 1024_cascade) through the library's stage functions, then both
decoders and the dual-grid mesher. Conditioning is random ``[1, 1029, 1024]`` / ``[1, 4101, 1024]`` tokens.

Token counts: random weights would give garbage voxel sets, so every voxel set comes from one voxelised closed
surface (a bumpy sphere, signed distance ``sdf``), independent of the networks' outputs:
* the SS stage runs in full (flow + decoder) but its occupancy is replaced by the surface band at 32³ whose width is
  fitted (bisection) to ``N_LR`` tokens (≈ 3 K for '512', ≈ 4 K for the cascades);
* the cascade ``upsample`` runs the shape decoder's first four levels with *guided* subdivisions: a child voxel is
  kept iff its centre is within a fitted band of the surface; the band is fitted so that the official quantisation
  (``hr_coords_from_lr``) gives ``N_HR`` ≈ 20 K tokens at 1024 and ≈ 47 K (just under the 49 152 cap) at 1536;
* both decoders run with the same kind of guided subdivision masks (``guide_subs``, the mechanism the texture
  decoder always uses), fitted so that the finest level has the voxel counts of performance.md §1.2
  (621 K at 512, 2.50 M at 1024, 5.62 M at 1536; the shape decoder's ``to_subdiv`` head is skipped, ~0.1 % of it).

Modes (same process, same noise, same voxel sets): ``reference`` = eager, FlashAttention-2 kernels (SDPA flash
backend, the official ``flash_attn`` class), nothing cached; ``eager`` = eager with PyTorch's default SDPA choice;
``fast`` = ``FastPathConfig.fast()``; ``fast-<switch>`` / ``fast+<switch>`` = with a switch off / on (ablations);
``<mode>@<kernel>`` forces the attention kernel; ``<mode>:medium`` / ``<mode>:low`` run it under that VRAM preset
(weights in page-locked host memory, ``trellis2_core.loading.residency``; peak VRAM is the point). Each (type,
mode) first runs a short warm-up (2 steps per stage, one CFG and one plain step; full decoders) so that cuDNN plans,
Triton kernels and ``torch.compile`` graphs are built, then the timed run(s) (``--repeat``). ``--profile-stages``
adds one run whose named stages record their GPU kernels (busy vs idle time, gaps, top kernels). Final latents of
every mode are compared with the first mode (cosine similarity).

    python benchmarks/bench_pipeline.py --device cuda --types 512,1024_cascade,1536_cascade \\
        --modes reference,fast --json pipeline.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from trellis2_core.config import FastPathConfig  # noqa: E402
from trellis2_core.loading.config import Normalization  # noqa: E402
from trellis2_core.loading.residency import Residency  # noqa: E402
from trellis2_core.models import model_class  # noqa: E402
from trellis2_core.models.sparse_unet import SparseResBlockC2S3d  # noqa: E402
from trellis2_core.models.streaming import weights_on_device  # noqa: E402
from trellis2_core.models.texture_decoder import pbr_voxels  # noqa: E402
from trellis2_core.pipeline.cascade import hr_coords_from_lr, quantize_coords  # noqa: E402
from trellis2_core.pipeline.sampler import SamplerParams  # noqa: E402
from trellis2_core.pipeline.stages import (  # noqa: E402
    PipelineType, StageHooks, sample_material, sample_shape, sample_structure)
from trellis2_core.sparse import SparseTensor, subdivide  # noqa: E402

# ------------------------------------------------------------------------------------------------ configurations
_DIT = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334, pe_mode="rope",
            share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True, dtype="bfloat16", initialization="scaled")
_DIT_TINY = dict(_DIT, model_channels=64, cond_channels=32, num_blocks=2, num_heads=2, dtype="float32")  # CPU test
_FLOWS = {"ss": ("SparseStructureFlowModel", dict(resolution=16, in_channels=8, out_channels=8)),
          "shape_512": ("ElasticSLatFlowModel", dict(resolution=32, in_channels=32, out_channels=32)),
          "shape_1024": ("ElasticSLatFlowModel", dict(resolution=64, in_channels=32, out_channels=32)),
          "tex_512": ("ElasticSLatFlowModel", dict(resolution=32, in_channels=64, out_channels=32)),
          "tex_1024": ("ElasticSLatFlowModel", dict(resolution=64, in_channels=64, out_channels=32))}
_SC = dict(model_channels=[1024, 512, 256, 128, 64], latent_channels=32, num_blocks=[4, 16, 8, 4, 0],
           block_type=["SparseConvNeXtBlock3d"] * 5, up_block_type=["SparseResBlockC2S3d"] * 4, use_fp16=True)
_SC_TINY = dict(_SC, model_channels=[64, 32, 16, 16, 8], num_blocks=[1, 1, 1, 1, 0], use_fp16=False)
_SS_DEC = dict(out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2, channels=[512, 128, 32],
               norm_type="layer", use_fp16=True)
_SS_DEC_TINY = dict(_SS_DEC, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8], use_fp16=False)
# §1.4 pipeline.json sampler defaults
_SAMPLERS = {"ss": SamplerParams(12, 7.5, 0.7, (0.6, 1.0), 5.0), "shape": SamplerParams(12, 7.5, 0.5, (0.6, 1.0), 3.0),
             "tex": SamplerParams(12, 1.0, 0.0, (0.6, 0.9), 3.0)}
# token targets: (N_LR at 32³, N_HR, finest decoder level) per type; performance.md §1.2 / §1.4
_TARGETS = {"512": (3_000, None, 621_000), "1024_cascade": (4_000, 20_000, 2_500_000),
            "1536_cascade": (4_000, 47_000, 5_620_000)}
_TARGETS_TINY = {"512": (300, None, 8_000), "1024_cascade": (400, 1_500, 30_000),
                 "1536_cascade": (400, 3_000, 60_000)}
_MAX_TOKENS = 49152


@dataclasses.dataclass
class Models:
    flows: dict
    ss_dec: torch.nn.Module
    shape_dec: torch.nn.Module
    tex_dec: torch.nn.Module
    cond512: torch.Tensor
    cond1024: torch.Tensor


@torch.no_grad()
def _randomise(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random weights in place: matrices N(0, 1/fan_in), norm scales 1, biases and vectors N(0, 0.02²)."""
    for name, p in model.named_parameters():
        if name.endswith("gamma") or (p.dim() == 1 and "norm" in name and name.endswith("weight")):
            p.fill_(1.0)
        elif p.dim() >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _build(name: str, args: dict, device: torch.device, gen: torch.Generator) -> torch.nn.Module:
    with torch.device("meta"):
        model = model_class(name)(**args)
    return _randomise(model.to_empty(device=device), gen)


def build_models(device: torch.device, tiny: bool, keys: set[str]) -> Models:
    gen = torch.Generator(device=device).manual_seed(1234)
    dit = _DIT_TINY if tiny else _DIT
    flows = {k: _build(cls, {**dit, **args}, device, gen) for k, (cls, args) in _FLOWS.items() if k in keys}
    sc = _SC_TINY if tiny else _SC
    ss_dec = _build("SparseStructureDecoder", _SS_DEC_TINY if tiny else _SS_DEC, device, gen)
    with torch.no_grad():  # make sure the (ignored) SS occupancy is never empty
        ss_dec.out_layer[2].bias.fill_(1.0)
    shape_dec = _build("FlexiDualGridVaeDecoder", dict(sc, resolution=256), device, gen)
    tex_dec = _build("SparseUnetVaeDecoder", dict(sc, out_channels=6, pred_subdiv=False), device, gen)
    c = dit["cond_channels"]
    cond512 = torch.randn(1, 1029, c, device=device, generator=gen)
    cond1024 = torch.randn(1, 4101, c, device=device, generator=gen)
    return Models(flows, ss_dec, shape_dec, tex_dec, cond512, cond1024)


# ------------------------------------------------------------------------------------------------ geometry
def blob_sdf(p: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance of a bumpy sphere in the unit cube; ``p [K, 3]`` in [0, 1]."""
    q = p - 0.5
    bump = 1.0 + 0.08 * torch.sin(11.0 * q[:, 0]) * torch.sin(13.0 * q[:, 1] + 0.3) * torch.sin(9.0 * q[:, 2] + 1.1)
    return q.norm(dim=1) - 0.40 * bump


def band_grid(res: int, width: float, device: torch.device) -> torch.Tensor:
    """``[N, 4]`` int32 coords (lexicographic) of the ``res``³ cells within ``width`` voxels of the surface."""
    ax = torch.arange(res, device=device)
    ijk = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
    keep = blob_sdf((ijk.float() + 0.5) / res).abs() <= width / res
    ijk = ijk[keep]
    return torch.cat([torch.zeros_like(ijk[:, :1]), ijk], dim=1).to(torch.int32)


_SLOTS = [[s & 1, (s >> 1) & 1, (s >> 2) & 1] for s in range(8)]


def subdivision_chain(coords: torch.Tensor, res: int, width: float, levels: int
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Masks ``[N_i, 8]`` keeping the children within ``width`` (child voxels) of the surface, and the last coords."""
    masks = []
    for _ in range(levels):
        child = coords[:, None, 1:] * 2 + torch.tensor(_SLOTS, device=coords.device, dtype=coords.dtype)
        d = blob_sdf((child.reshape(-1, 3).float() + 0.5) / (2 * res)).abs().view(-1, 8)
        mask = d <= width / (2 * res)
        masks.append(mask)
        coords = subdivide(SparseTensor(coords.new_empty(coords.shape[0], 1), coords, validate=False), mask).coords
        res *= 2
    return masks, coords


def fit_width(count, target: int, lo: float = 0.05, hi: float = 8.0, iters: int = 16) -> float:
    """Smallest band width (bisection) whose voxel count reaches ``target``."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return hi


@dataclasses.dataclass
class Geometry:
    lr_coords: torch.Tensor
    up_masks: list | None
    hr_coords: torch.Tensor
    hr_res: int
    dec_masks: list
    levels: list[int]


def make_geometry(ptype: PipelineType, targets: tuple, device: torch.device) -> Geometry:
    n_lr, n_hr, n_final = targets
    w = fit_width(lambda x: band_grid(32, x, device).shape[0], n_lr)
    lr = band_grid(32, w, device)
    up_masks, hr, hr_res = None, lr, 512
    if ptype.cascade:
        def hr_count(x: float) -> int:
            return quantize_coords(subdivision_chain(lr, 32, x, 4)[1], 512, ptype.resolution).shape[0]
        w_up = fit_width(hr_count, n_hr)
        up_masks, up = subdivision_chain(lr, 32, w_up, 4)
        hr, hr_res = hr_coords_from_lr(up, 512, ptype.resolution, _MAX_TOKENS)
    r0 = hr_res // 16
    w_dec = fit_width(lambda x: subdivision_chain(hr, r0, x, 4)[1].shape[0], n_final)
    dec_masks, final = subdivision_chain(hr, r0, w_dec, 4)
    levels = [hr.shape[0]] + [int(m.sum()) for m in dec_masks]
    return Geometry(lr, up_masks, hr, hr_res, [m.float() * 2 - 1 for m in dec_masks], levels)


@torch.no_grad()
def guided_upsample(decoder: torch.nn.Module, latent: SparseTensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """The decoder's ``upsample(latent, 4)`` with given subdivisions (same work: 3 full levels + the 4th split)."""
    with weights_on_device(decoder):
        h = decoder._embed(latent)
        for i in range(4):
            for block in decoder.blocks[i]:
                with weights_on_device(block):
                    if isinstance(block, SparseResBlockC2S3d):
                        if i == 3:
                            return block.subdivision(h, masks[i].float() * 2 - 1)[0].coords
                        h, _ = block(h, masks[i].float() * 2 - 1)
                    else:
                        h = block(h)
    raise AssertionError("unreachable")


def manage(m: Models, preset: str, device: torch.device) -> Residency:
    """Put every model under a VRAM preset (weights move to page-locked host memory for medium/low)."""
    res = Residency(device, preset)
    for key, module in _all_models(m).items():
        res.add(key, module)
    return res


def unmanage(m: Models, res: Residency, device: torch.device) -> None:
    res.clear()
    for module in _all_models(m).values():
        module.to(device)


def _all_models(m: Models) -> dict:
    return {**{f"flow_{k}": v for k, v in m.flows.items()}, "ss_dec": m.ss_dec, "shape_dec": m.shape_dec,
            "tex_dec": m.tex_dec}


# ------------------------------------------------------------------------------------------------ one run
class Timer:
    """Per-stage wall time (ms) and, on CUDA, per-stage peak allocated/reserved memory (GB); optionally the GPU
    timeline of some stages (``profile_stages``: kernels recorded by ``torch.profiler``, summarised per stage into
    ``profile``)."""

    def __init__(self, device: torch.device, profile_stages: Sequence[str] = ()) -> None:
        self.device, self.ms, self.peak_gb = device, {}, {}
        self.profile_stages, self.profile = tuple(profile_stages), {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        cuda = self.device.type == "cuda"
        if cuda:  # each stage's own peak (the run's peak is the largest of them)
            torch.cuda.reset_peak_memory_stats(self.device)
        prof = None
        if name in self.profile_stages:
            from torch.profiler import ProfilerActivity, profile
            prof = profile(activities=[ProfilerActivity.CUDA])
            prof.__enter__()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        if prof is not None:
            prof.__exit__(None, None, None)
            self.profile[name] = summarize_gpu_timeline(prof, self.ms[name])
        if cuda:
            self.peak_gb[name] = [round(v, 2) for v in self._peaks()]

    def _peaks(self) -> tuple[float, float]:
        return (torch.cuda.max_memory_allocated(self.device) / 1e9,
                torch.cuda.max_memory_reserved(self.device) / 1e9)


def summarize_gpu_timeline(prof, wall_ms: float, top: int = 12) -> dict:
    """Where a profiled stage's wall time went on the GPU: the union of kernel/copy intervals (busy), the idle rest,
    the gaps between GPU work (count and sum of those over 20 µs, the largest ones) and the kernels with the most
    time. From the profiler's Chrome trace (µs timestamps)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "?")) for e in events
                   if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e)
    if not spans:
        return {"wall_ms": wall_ms, "error": "no GPU events recorded"}
    busy, gaps, (cur0, cur1) = 0.0, [], spans[0][:2]
    per_name: dict[str, list[float]] = {}
    for t0, t1, name in spans:
        rec = per_name.setdefault(name[:90], [0.0, 0])
        rec[0] += t1 - t0
        rec[1] += 1
        if t0 > cur1:
            busy, gaps, (cur0, cur1) = busy + cur1 - cur0, gaps + [t0 - cur1], (t0, t1)
        else:
            cur1 = max(cur1, t1)
    busy += cur1 - cur0
    big = sorted((g for g in gaps if g > 20.0), reverse=True)
    kernels = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {"wall_ms": round(wall_ms, 1), "gpu_busy_ms": round(busy / 1e3, 3),
            "gpu_span_ms": round((spans[-1][1] - spans[0][0]) / 1e3, 3),
            "idle_ms": round(wall_ms - busy / 1e3, 3), "events": len(spans),
            "gaps_over_20us": len(big), "gaps_over_20us_ms": round(sum(big) / 1e3, 3),
            "largest_gaps_us": [round(g) for g in big[:10]],
            "top_kernels": [{"name": n, "ms": round(v[0] / 1e3, 3), "count": v[1]} for n, v in kernels]}


@torch.no_grad()
def run_pipeline(m: Models, geo: Geometry, ptype: PipelineType, fast: FastPathConfig, device: torch.device,
                 warmup: bool, seed: int = 42, profile_stages: Sequence[str] = ()) -> dict:
    """All stages once; returns per-stage ms, DiT forwards per stage and the final latents (and, with
    ``profile_stages``, those stages' GPU timeline summaries under ``profile``)."""
    sp = {k: dataclasses.replace(v, steps=2, rescale_t=1.0) if warmup else v for k, v in _SAMPLERS.items()}
    norm = Normalization((0.0,) * 32, (1.0,) * 32)
    hooks, gen, fwd = StageHooks(record_calls=True), torch.Generator().manual_seed(seed), {}
    timer = Timer(device, profile_stages)
    with timer("structure"):
        st = sample_structure(m.flows["ss"], m.ss_dec, m.cond512, sp["ss"], ptype.ss_res, gen, hooks, fast=fast)
    fwd["structure"] = len(st.run.calls)
    latents = {"ss": st.latent.float()}
    if ptype.cascade:
        with timer("shape_lr"):
            lr = sample_shape(m.flows["shape_512"], m.cond512, geo.lr_coords, sp["shape"], norm, 512, gen, hooks,
                              fast=fast)
        with timer("upsample"):
            up = guided_upsample(m.shape_dec, lr.slat, geo.up_masks)
            hr, hr_res = hr_coords_from_lr(up, 512, ptype.resolution, _MAX_TOKENS)
        with timer("shape_hr"):
            shape = sample_shape(m.flows["shape_1024"], m.cond1024, hr, sp["shape"], norm, hr_res, gen, hooks,
                                 fast=fast)
        fwd["shape_lr"], fwd["shape_hr"] = len(lr.runs["shape"].calls), len(shape.runs["shape"].calls)
        latents["shape_lr"] = lr.slat.feats
        tex_flow, cond = m.flows["tex_1024"], m.cond1024
    else:
        with timer("shape"):
            shape = sample_shape(m.flows["shape_512"], m.cond512, geo.lr_coords, sp["shape"], norm, 512, gen, hooks,
                                 fast=fast)
        fwd["shape"] = len(shape.runs["shape"].calls)
        tex_flow, cond = m.flows["tex_512"], m.cond512
    with timer("texture"):
        mat = sample_material(tex_flow, cond, shape.slat, sp["tex"], norm, norm, gen, hooks, fast=fast)
    fwd["texture"] = len(mat.run.calls)
    latents.update(shape=shape.slat.feats, tex=mat.slat.feats)
    with timer("shape_decoder"), weights_on_device(m.shape_dec):
        raw, _ = m.shape_dec.forward_with_subs(shape.slat, guide_subs=geo.dec_masks)
    with timer("tex_decoder"), weights_on_device(m.tex_dec):
        tex_raw = m.tex_dec(mat.slat, guide_subs=geo.dec_masks)
    with timer("mesh"):
        meshes = m.shape_dec.meshes_from_raw(raw, shape.res)
        pbr_voxels(tex_raw, shape.res)
    return {"stages_ms": timer.ms, "stage_peak_gb": timer.peak_gb, "forwards": fwd, "latents": latents,
            "profile": timer.profile,
            "n_hr": int(shape.slat.num_voxels),
            "hr_res": int(shape.res), "voxels_out": int(raw.num_voxels), "faces": int(meshes[0].faces.shape[0])}


def parse_preset(name: str) -> str:
    """The VRAM preset of a mode name (``fast:medium``); 'high' (all resident) by default."""
    preset = name.partition(":")[2] or "high"
    if preset not in ("high", "medium", "low"):
        raise ValueError(f"mode {name!r}: VRAM preset must be high, medium or low")
    return preset


def parse_mode(name: str) -> FastPathConfig:
    base, _, kernel = name.partition(":")[0].partition("@")
    head, *parts = re.split(r"(?=[-+])", base)
    cfg = {"reference": FastPathConfig.reference(), "eager": FastPathConfig(), "fast": FastPathConfig.fast()}[head]
    fields = {f.name for f in dataclasses.fields(FastPathConfig)}
    for part in parts:
        if part[1:] not in fields:
            raise ValueError(f"mode {name!r}: unknown switch {part[1:]!r}; switches: {', '.join(sorted(fields))}")
        cfg = dataclasses.replace(cfg, **{part[1:]: part[0] == "+"})
    return dataclasses.replace(cfg, attention_kernel=kernel) if kernel else cfg


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def bench_type(m: Models, tname: str, modes: list[str], device: torch.device, tiny: bool, log,
               repeat: int = 1, profile: tuple[list[str], list[str]] | None = None) -> dict:
    """Every mode on one pipeline type; ``profile = (stages, modes)`` adds one profiled run of those modes."""
    ptype = PipelineType.parse(tname)
    t0 = time.perf_counter()
    geo = make_geometry(ptype, (_TARGETS_TINY if tiny else _TARGETS)[tname], device)
    out = {"tokens": {"N_LR": int(geo.lr_coords.shape[0]), "N_HR": int(geo.hr_coords.shape[0]), "hr_res": geo.hr_res,
                      "decoder_levels": geo.levels}, "geometry_s": time.perf_counter() - t0, "modes": {}}
    log(f"[{tname}] tokens {out['tokens']} (geometry {out['geometry_s']:.1f} s)")
    first = None
    for mode in modes:
        rec: dict = {"config": dataclasses.asdict(parse_mode(mode))}
        residency = None
        try:
            fast, preset = parse_mode(mode), parse_preset(mode)
            rec["vram_preset"] = preset
            if preset != "high":
                tw = time.perf_counter()
                residency = manage(m, preset, device)
                rec["offload_setup_s"] = time.perf_counter() - tw
                rec["host_weights_gb"] = residency.host_bytes / 1e9
            tw = time.perf_counter()
            run_pipeline(m, geo, ptype, fast, device, warmup=True)
            rec["warmup_s"] = time.perf_counter() - tw
            runs = []
            for _ in range(repeat):  # best of `repeat` timed runs (all totals kept)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                res = run_pipeline(m, geo, ptype, fast, device, warmup=False)
                res["total_ms"] = sum(v for k, v in res["stages_ms"].items() if k != "mesh")
                res["total_with_mesh_ms"] = sum(res["stages_ms"].values())
                if device.type == "cuda":  # the largest per-stage peak (each stage resets the counters)
                    peaks = list(res["stage_peak_gb"].values())
                    res["peak_vram_gb"] = max(p[0] for p in peaks)
                    res["peak_reserved_gb"] = max(p[1] for p in peaks)
                runs.append(res)
            res = min(runs, key=lambda r: r["total_ms"])
            rec.update({k: v for k, v in res.items() if k != "latents"})
            rec["all_totals_ms"] = [r["total_ms"] for r in runs]
            if profile is not None and mode in profile[1] and device.type == "cuda":
                torch.cuda.empty_cache()
                rec["profile"] = run_pipeline(m, geo, ptype, fast, device, warmup=False,
                                              profile_stages=profile[0])["profile"]
                log(f"[{tname}] {mode}: GPU timeline {json.dumps(rec['profile'])}")
            if first is None:
                first = (mode, res["latents"])
            rec["cosine_vs"] = first[0]
            rec["cosine"] = {k: _cos(v, first[1][k]) for k, v in res["latents"].items()}
            log(f"[{tname}] {mode}: total {rec['total_ms']:.0f} ms, peak {rec.get('peak_vram_gb', 0):.2f} GB "
                f"allocated / {rec.get('peak_reserved_gb', 0):.2f} GB reserved, stages "
                + ", ".join(f"{k} {v:.0f}" for k, v in res["stages_ms"].items())
                + (f"; stage peaks GB (alloc, reserved) {res['stage_peak_gb']}" if res.get("stage_peak_gb") else "")
                + f"; warm-up {rec['warmup_s']:.1f} s; totals {[round(v) for v in rec['all_totals_ms']]}; cos "
                + ", ".join(f"{k} {v:.5f}" for k, v in rec["cosine"].items()))
        except Exception as err:  # keep going: one failing mode must not lose the other numbers
            rec["error"] = f"{type(err).__name__}: {err}"
            log(f"[{tname}] {mode}: FAILED {rec['error']}\n{traceback.format_exc()}")
        finally:
            if residency is not None:
                unmanage(m, residency, device)
        out["modes"][mode] = rec
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ attention kernels
def bench_attention(device: torch.device, log) -> dict:
    """SDPA kernels on the DiT shapes (B=1, 12 heads × 128, bf16): median ms and TFLOP/s per kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}
    shapes = {"self_4096": (1, 4096, 4096), "self_20000": (1, 20000, 20000), "self_49152": (1, 49152, 49152),
              "cross_20000x4101": (1, 20000, 4101), "cross_4096x1029": (1, 4096, 1029),
              "self_4096_b2": (2, 4096, 4096), "cross_4096x1029_b2": (2, 4096, 1029)}
    out = {}
    for sname, (b, nq, nk) in shapes.items():
        q = torch.randn(b, 12, nq, 128, device=device, dtype=torch.bfloat16)
        k, v = (torch.randn(b, 12, nk, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
        row = {}
        for kname, backend in kernels.items():
            try:
                with sdpa_kernel([backend]):
                    ms = _time_cuda(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
                row[kname] = {"ms": ms, "tflops": 4 * b * 12 * nq * nk * 128 / ms / 1e9}
            except RuntimeError as err:
                row[kname] = {"error": str(err).splitlines()[0]}
        out[sname] = row
        log(f"[attention] {sname}: " + ", ".join(
            f"{k} {r['ms']:.3f} ms ({r['tflops']:.0f} TF/s)" if "ms" in r else f"{k} n/a" for k, r in row.items()))
    return out


def _time_cuda(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


# ------------------------------------------------------------------------------------------------ report
def table(results: dict) -> str:
    lines = []
    for tname, tr in results["types"].items():
        modes = [m for m, r in tr["modes"].items() if "error" not in r]
        tok = tr["tokens"]
        lines.append(f"\n{tname}: N_LR {tok['N_LR']}, N_HR {tok['N_HR']} (res {tok['hr_res']}), "
                     f"decoder levels {tok['decoder_levels']}")
        if not modes:
            lines.append("  (every mode failed)")
            continue
        stages = list(tr["modes"][modes[0]]["stages_ms"])
        lines.append("| stage | " + " | ".join(f"{m} ms" for m in modes) + " | " +
                     " | ".join(f"{m}/{modes[0]}" for m in modes[1:]) + " |")
        lines.append("|---" * (1 + 2 * len(modes) - 1) + "|")
        rows = [(s, [tr["modes"][m]["stages_ms"].get(s, float("nan")) for m in modes]) for s in stages]
        rows += [("**total (sampling + decoders)**", [tr["modes"][m]["total_ms"] for m in modes]),
                 ("total incl. mesh", [tr["modes"][m]["total_with_mesh_ms"] for m in modes])]
        for s, vals in rows:
            ratios = [f"{v / vals[0]:.2f}" if vals[0] else "-" for v in vals[1:]]
            lines.append(f"| {s} | " + " | ".join(f"{v:.0f}" for v in vals) + " | " + " | ".join(ratios) + " |")
        peaks = [tr["modes"][m].get("peak_vram_gb") for m in modes]
        if all(p is not None for p in peaks):
            lines.append("| peak VRAM GB (allocated) | " + " | ".join(f"{p:.2f}" for p in peaks) + " |"
                         + " |" * (len(modes) - 1))
            res = [tr["modes"][m].get("peak_reserved_gb", float("nan")) for m in modes]
            lines.append("| peak VRAM GB (reserved) | " + " | ".join(f"{p:.2f}" for p in res) + " |"
                         + " |" * (len(modes) - 1))
        for m in modes[1:]:
            cos = tr["modes"][m]["cosine"]
            lines.append(f"  cosine {m} vs {modes[0]}: " + ", ".join(f"{k} {v:.5f}" for k, v in cos.items()))
        for m, r in tr["modes"].items():
            if "error" in r:
                lines.append(f"  {m}: FAILED {r['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--types", default="512,1024_cascade,1536_cascade")
    ap.add_argument("--modes", default="reference,fast")
    ap.add_argument("--extra-modes", default="", help="more modes (ablations), run only for --extra-types")
    ap.add_argument("--extra-types", default="512,1024_cascade")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per mode for --repeat-types (best is shown)")
    ap.add_argument("--repeat-types", default="512,1024_cascade")
    ap.add_argument("--json", default=None, help="write results here (rewritten after every type)")
    ap.add_argument("--profile-stages", default="",
                    help="after the timed runs, one more run of --profile-modes with these stages' GPU kernels "
                         "recorded (torch.profiler; comma-separated): busy vs idle time, gaps, top kernels (CUDA)")
    ap.add_argument("--profile-modes", default="fast")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and token counts (CPU smoke test)")
    ap.add_argument("--attention", action="store_true", help="also time the SDPA kernels on DiT shapes (CUDA)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    types, modes = args.types.split(","), args.modes.split(",")
    extra = [m for m in args.extra_modes.split(",") if m]
    for mode in modes + extra:
        parse_mode(mode)

    def log(msg: str) -> None:
        print(msg, flush=True)

    import importlib.util
    env = {"torch": torch.__version__, "device": str(device), "tiny": args.tiny, "argv": sys.argv[1:],
           "triton": __import__("triton").__version__ if importlib.util.find_spec("triton") else None}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
    results = {"env": env, "types": {}}
    keys = {"ss"} | ({"shape_512", "tex_512"} if "512" in types else set()) | (
        {"shape_512", "shape_1024", "tex_1024"} if any(t.endswith("_cascade") for t in types) else set())
    t0 = time.perf_counter()
    models = build_models(device, args.tiny, keys)
    results["build_s"] = time.perf_counter() - t0
    log(f"built {sorted(keys)} + decoders in {results['build_s']:.1f} s; env {env}")

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    if args.attention and device.type == "cuda":
        results["attention"] = bench_attention(device, log)
        save()
    for tname in types:
        tmodes = modes + (extra if tname in args.extra_types.split(",") else [])
        rep = args.repeat if tname in args.repeat_types.split(",") else 1
        prof = (args.profile_stages.split(","), args.profile_modes.split(",")) if args.profile_stages else None
        results["types"][tname] = bench_type(models, tname, tmodes, device, args.tiny, log, rep, prof)
        if device.type == "cuda":
            from torch._dynamo.utils import counters
            results["types"][tname]["dynamo"] = {k: dict(v) for k, v in counters.items()
                                                 if k in ("stats", "graph_break")}
        save()
    log(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
