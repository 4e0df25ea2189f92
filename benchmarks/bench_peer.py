"""Ours vs ComfyUI core 0.33.0's native TRELLIS.2, in one process, on the same random weights and the same inputs.

Parts (each can be skipped):

* ``dit``: one DiT forward per stage: structure (16³ dense), shape LR (N_LR ≈ 4 K tokens at 32³), shape HR (N_HR ≈
  20 K at 1024, ≈ 47 K with ``--hr 1536``), texture (N_HR tokens, shape latent concatenated). Each with CFG batching
  (one batch-2 call: cond + zero uncond) and without (two batch-1 calls). Ours: ``ElasticSLatFlowModel`` /
  ``SparseStructureFlowModel`` at the official dtype split, ``FastPathConfig.fast()`` (``--compile`` to compile the
  blocks; ``--ours-mode reference`` for the plain op mix); core: ``comfy.ldm.trellis2.model.Trellis2.forward`` (its
  padded ``[B, C, N, 1]`` interface, CFG duplication of coords) with every weight in ``--core-dtype`` (bf16 like
  core's files). Weights: the official layout, randomised in our models, loaded with ``load_state_dict(strict=True)``
  into core's sub-models (``structure_model``, ``img2shape_512``, ``img2shape``, ``shape2txt``). Cosine of the outputs
  checks that both compute the same function.
* ``decoders``: shape and texture SC-VAE decoders on the same voxel hierarchy (guided subdivisions fitted to ≈ 2.5 M
  finest voxels at 1024, as ``bench_pipeline.py``; the shape decoder's ``to_subdiv`` head is skipped by both: core's
  blocks get ``pred_subdiv = False``); core's gather-GEMM sparse conv (``flexgemm.py``) vs ours. Raw outputs are
  compared after sorting both by voxel.
* ``post``: post-processing of ``bench_export.make_blob_surface(--post-res)`` (≈ 3.7 M faces at 1024, + its PBR
  voxels) to ``--faces`` at ``--texture-size``: ours (fill holes → clean → decimate → clean+orient → unwrap →
  bake; ``export_glb`` also end to end) vs the helpers core's nodes call (FillHoles → ``fill_holes_v2_fn``, DecimateMesh →
  ``qem_decimate_simplify`` (midpoint preset), UnwrapMesh → ``_uv_unwrap`` ('pec' on the device, then its v flip),
  BakeTextureFromVoxel → ``bake_texture_from_voxel_fn``), run in a worker process with a deadline per stage
  (``--core-timeout``). Both atlases get ``atlas_quality`` figures.

Times are medians of ``--repeat`` runs after one warm-up (CUDA events); "extra peak" is ``max_memory_allocated``
during the timed calls minus what was allocated before them (activations and workspaces; the weights of both sides
stay resident during a stage and are listed apart); post-processing stages report their absolute peak. A core call
that misses its deadline is recorded as "did not finish in X s"; core's remaining GPU parts are then skipped (its
thread cannot be stopped).

    python benchmarks/peer_bundle.py          # once, on a machine with the tarball
    python benchmarks/bench_peer.py --device cuda --json peer.json --md peer.md
    python benchmarks/bench_peer.py --device cpu --tiny                   # smoke run, tiny widths
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from benchmarks.peer_core import comfy_dir, load_core  # noqa: E402

DIT_STAGES = (  # (name, our model key, core role, core generation mode)
    ("structure", "sparse_structure_flow_model", "structure_model", "structure_generation"),
    ("shape_lr", "shape_slat_flow_model_512", "img2shape_512", "shape_generation_512"),
    ("shape_hr", "shape_slat_flow_model_1024", "img2shape", "shape_generation"),
    ("texture", "tex_slat_flow_model_1024", "shape2txt", "texture_generation"),
)
_T = 600.0  # the timestep value both models get (= 1000·t)


# ------------------------------------------------------------------------------------------------ measuring
class Deadline(Exception):
    pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(fn, timeout: float | None):
    """``fn()``; with ``timeout``, in a daemon thread that must finish within it (else :class:`Deadline`)."""
    if timeout is None:
        return fn()
    box: dict = {}

    def run():
        try:
            with torch.no_grad():  # grad mode is per thread
                box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise Deadline(f"did not finish in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def measure(fn, device: torch.device, repeat: int, timeout: float | None = None) -> dict:
    """Warm-up + ``repeat`` timed calls: ``{ms, peak_gb, out}`` (ms: median; peak_gb: the most memory allocated
    during the timed calls beyond what was allocated before them: activations and workspaces, not weights)."""
    out = _call(fn, timeout)  # warm-up
    times = []
    base = 0
    if device.type == "cuda":
        _sync(device)
        del out
        out = None
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = _call(fn, timeout)
            end.record()
            _sync(device)
            times.append(start.elapsed_time(end))
        else:
            out = _call(fn, timeout)
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 1e9 if device.type == "cuda" else None
    return {"ms": round(statistics.median(times), 3), "peak_gb": None if peak is None else round(peak, 2), "out": out}


def weights_gb(module: torch.nn.Module) -> float:
    return round(sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e9, 3)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return round(float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)), 6)


# ------------------------------------------------------------------------------------------------ DiTs
def _core_trellis(core, specs: dict, device: torch.device, dtype: torch.dtype):
    a = specs["shape_slat_flow_model_1024"][1]
    keys = ("model_channels", "cond_channels", "num_blocks", "num_heads", "mlp_ratio", "share_mod", "qk_rms_norm",
            "qk_rms_norm_cross")
    return core.model.Trellis2(a["resolution"], init_txt_model=True, operations=core.ops.disable_weight_init,
                               device=device, dtype=dtype, **{k: a[k] for k in keys}).eval()


def _ours(key: str, specs: dict, device: torch.device, gen: torch.Generator):
    from benchmarks.bench_pipeline import _build

    cls, args = specs[key]
    return _build(cls, args, device, gen)


def _batched_coords(coords: torch.Tensor, b: int) -> torch.Tensor:
    reps = []
    for i in range(b):
        c = coords.clone()
        c[:, 0] = i
        reps.append(c)
    return torch.cat(reps)


@torch.no_grad()
def bench_dits(core, specs: dict, geo, device: torch.device, args, state: dict) -> list[dict]:
    from trellis2_core.config import FastPathConfig
    from trellis2_core.sparse import SparseTensor

    fast = FastPathConfig.reference() if args.ours_mode == "reference" else \
        FastPathConfig.fast(compile_blocks=args.compile)
    dtype = getattr(torch, args.core_dtype)
    gen = torch.Generator(device=device).manual_seed(7)
    cc = specs["shape_slat_flow_model_1024"][1]["cond_channels"]
    cond512 = torch.randn(1, 1029, cc, device=device, generator=gen)
    cond1024 = torch.randn(1, 4101, cc, device=device, generator=gen)
    core_tr = _core_trellis(core, specs, device, dtype)
    rows = []
    for name, key, role, mode in DIT_STAGES:
        if name not in args.stages:
            continue
        ours = _ours(key, specs, device, gen)
        getattr(core_tr, role).load_state_dict(ours.state_dict(), strict=True)
        cond = cond512 if name in ("structure", "shape_lr") else cond1024
        if name == "structure":
            x = torch.randn(1, 8, 16, 16, 16, device=device, generator=gen)
            coords, slat = None, None
        else:
            coords = geo.lr_coords if name == "shape_lr" else geo.hr_coords
            x = torch.randn(coords.shape[0], 32, device=device, generator=gen)
            slat = torch.randn(coords.shape[0], 32, device=device, generator=gen) if name == "texture" else None
        for b in (2, 1):  # CFG batched: one batch-2 call; unbatched: two batch-1 calls (cond, uncond)
            xb = x.repeat(b, *([1] * (x.dim() - 1)))
            both = torch.cat([cond, torch.zeros_like(cond)])  # CFG: cond, then the zero uncond
            conds = [both] if b == 2 else [both[:1], both[1:]]
            tb = torch.full((b,), _T, device=device)

            def ours_fn():
                outs = []
                for cb in conds:
                    if coords is None:
                        outs.append(ours(xb, tb, cb, fast=fast))
                    else:
                        st = SparseTensor(xb, _batched_coords(coords, b))
                        cat = None if slat is None else SparseTensor(slat.repeat(b, 1), st.coords)
                        outs.append(ours(st, tb, cb, concat_cond=cat, fast=fast).feats)
                return torch.cat(outs).float()

            def core_fn():
                kw = dict(trellis2_generation_mode=mode, transformer_options={})
                if coords is not None:
                    xin = x.to(dtype).t().unsqueeze(0).unsqueeze(-1).repeat(b, 1, 1, 1)  # [B, C, N, 1]
                    kw.update(trellis2_coords=coords, trellis2_coord_counts=torch.tensor([coords.shape[0]],
                                                                                          device=device))
                    if slat is not None:
                        kw["trellis2_shape_slat"] = slat.to(dtype)
                else:
                    xin = xb.to(dtype)
                outs = []
                for cb in conds:  # the HR stages read their conditioning from ``embeds``, the others ``context``
                    out = core_tr(xin, tb.to(dtype), cb.to(dtype), embeds=cb.to(dtype), **kw)
                    outs.append(out[:, :8] if coords is None else
                                out.squeeze(-1).transpose(1, 2).reshape(-1, out.shape[1]))
                return torch.cat(outs).float()

            row = {"part": "dit", "stage": name, "cfg": "batch 2" if b == 2 else "2 x batch 1",
                   "tokens": int(16 ** 3 if coords is None else coords.shape[0]),
                   "ours_weights_gb": weights_gb(ours), "core_weights_gb": weights_gb(getattr(core_tr, role))}
            o = _ours_measure(ours_fn, device, args)
            row.update(ours_ms=o.get("ms"), ours_peak_gb=o.get("peak_gb"), ours_note=o.get("note"))
            c = _core_measure(core_fn, device, args, state)
            row.update(core_ms=c.get("ms"), core_peak_gb=c.get("peak_gb"), core_note=c.get("note"))
            if "out" in c and "out" in o:
                row["cosine"] = cosine(o["out"], c["out"])
            rows.append(row)
            print(_row_line(row), flush=True)
        del ours
        _free(device)
    del core_tr
    _free(device)
    return rows


def _ours_measure(fn, device: torch.device, args) -> dict:
    """:func:`measure` for our side; a failure is recorded (and printed) so the other parts still run."""
    try:
        return measure(fn, device, args.repeat)
    except Exception as e:  # noqa: BLE001 - recorded in the results, traceback printed
        import traceback

        traceback.print_exc()
        return {"note": f"failed: {type(e).__name__}: {str(e)[:200]}"}


def _core_measure(fn, device: torch.device, args, state: dict) -> dict:
    if state.get("core_stuck"):
        return {"note": f"skipped: {state['core_stuck']}"}
    try:
        return measure(fn, device, args.repeat, args.core_timeout)
    except Deadline as e:
        state["core_stuck"] = f"an earlier core call {e}"
        return {"note": str(e)}
    except Exception as e:  # noqa: BLE001 - core failing is a result, recorded
        return {"note": f"failed: {type(e).__name__}: {str(e)[:200]}"}


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row_line(row: dict) -> str:
    return (f"{row['part']:>8} {row['stage']:<14} {row.get('cfg', ''):<12} ours {row.get('ours_ms')} ms, "
            f"core {row.get('core_ms')} ms {row.get('core_note') or ''} cos {row.get('cosine')}")


# ------------------------------------------------------------------------------------------------ decoders
def _sorted_by_voxel(coords: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = coords.long()
    key = ((c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3]
    order = torch.argsort(key)
    return coords[order], feats[order]


@torch.no_grad()
def bench_decoders(core, specs: dict, geo, device: torch.device, args, state: dict) -> list[dict]:
    from trellis2_core.sparse import SparseTensor, subdivide

    dtype = getattr(torch, args.core_vae_dtype)
    gen = torch.Generator(device=device).manual_seed(11)
    levels = [geo.hr_coords]
    for mask in geo.dec_masks[:-1]:
        levels.append(subdivide(SparseTensor(levels[-1].new_empty(levels[-1].shape[0], 1), levels[-1],
                                             validate=False), mask > 0).coords)
    rows = []
    for name, key, core_cls in (("shape_decoder", "shape_slat_decoder", "FlexiDualGridVaeDecoder"),
                                ("tex_decoder", "tex_slat_decoder", "SparseUnetVaeDecoder")):
        if name not in args.stages:
            continue
        ours = _ours(key, specs, device, gen)
        spec = dict(specs[key][1])
        kw = {k: spec[k] for k in ("model_channels", "latent_channels", "num_blocks", "block_type", "up_block_type")}
        kw["block_args"] = [{}] * len(spec["num_blocks"])
        with torch.device(device):
            theirs = (core.vae.FlexiDualGridVaeDecoder(resolution=spec["resolution"], **kw) if core_cls ==
                      "FlexiDualGridVaeDecoder" else
                      core.vae.SparseUnetVaeDecoder(out_channels=spec["out_channels"], pred_subdiv=False, **kw))
        theirs.load_state_dict(ours.state_dict(), strict=True)
        theirs = theirs.to(device=device, dtype=dtype).eval()
        theirs.pred_subdiv = False  # guided: same subdivisions as ours, no to_subdiv head
        for block in theirs.modules():
            if hasattr(block, "pred_subdiv"):
                block.pred_subdiv = False
        lat = torch.randn(geo.hr_coords.shape[0], spec["latent_channels"], device=device, generator=gen)

        def ours_fn():
            st = SparseTensor(lat, geo.hr_coords)
            if name == "shape_decoder":
                raw, _ = ours.forward_with_subs(st, guide_subs=geo.dec_masks)
            else:
                raw = ours(st, guide_subs=geo.dec_masks)
            return raw.coords, raw.feats.float()

        def core_fn():
            x = core.vae.SparseTensor(feats=lat.to(dtype), coords=geo.hr_coords.int())
            subs = [core.vae.SparseTensor(feats=m.to(dtype), coords=c.int()) for m, c in zip(geo.dec_masks, levels)]
            h = core.vae.SparseUnetVaeDecoder.forward(theirs, x, guide_subs=subs)
            return h.coords, h.feats.float()

        row = {"part": "decoder", "stage": name, "tokens": int(geo.hr_coords.shape[0]), "voxels_out": geo.levels[-1],
               "ours_weights_gb": weights_gb(ours), "core_weights_gb": weights_gb(theirs)}
        o = _ours_measure(ours_fn, device, args)
        row.update(ours_ms=o.get("ms"), ours_peak_gb=o.get("peak_gb"), ours_note=o.get("note"))
        c = _core_measure(core_fn, device, args, state)
        row.update(core_ms=c.get("ms"), core_peak_gb=c.get("peak_gb"), core_note=c.get("note"))
        if "out" in c and "out" in o:
            oc, of = _sorted_by_voxel(*o["out"])
            tc, tf = _sorted_by_voxel(*c["out"])
            row["same_voxels"] = bool(oc.shape == tc.shape and torch.equal(oc.int(), tc.int()))
            if row["same_voxels"]:
                row["cosine"] = cosine(of, tf)
        rows.append(row)
        print(_row_line(row), flush=True)
        del ours, theirs
        _free(device)
    return rows


# ------------------------------------------------------------------------------------------------ post-processing
class StageClock:
    """Per-stage ms and peak allocated GB (reset per stage)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stages = device, {}

    def __call__(self, name: str, fn):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        value = fn()
        _sync(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None
        self.stages[name] = {"ms": round((time.perf_counter() - t0) * 1e3, 1),
                             "peak_gb": None if peak is None else round(peak, 2)}
        return value


def ours_post(mesh, voxels, faces: int, size: int, device: torch.device, end_to_end: bool) -> dict:
    from trellis2_core.postprocess import (ExportConfig, TriangleGrid, bake_pbr_textures, clean_mesh, decimate_mesh,
                                           export_glb, fill_holes, remove_unreferenced_vertices, unwrap_uv)

    from benchmarks.atlas_quality import atlas_quality

    clock = StageClock(device)
    filled = clock("fill_holes", lambda: fill_holes(mesh))
    grid = clock("closest_grid", lambda: TriangleGrid(filled.vertices, filled.faces))
    work = clock("clean", lambda: clean_mesh(filled, 1e-5, orient=False))
    work = clock("decimate", lambda: decimate_mesh(work, faces))
    work = clock("clean+orient", lambda: remove_unreferenced_vertices(clean_mesh(work))[0])
    atlas = clock("unwrap", lambda: unwrap_uv(work, size))
    clock("bake", lambda: bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, voxels, size, surface=grid))
    out = {"stages": clock.stages, "faces": int(atlas.faces.shape[0]),
           "atlas": atlas_quality(atlas.vertices, atlas.uvs, atlas.faces, size).to_dict()}
    if end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ExportConfig(target_faces=faces, texture_size=size)
            clock("export_glb (end to end)", lambda: export_glb(mesh, voxels, Path(tmp) / "peer.glb", cfg))
    return out


def core_post_worker(inp: str, outp: str, comfy: str, device_name: str) -> None:
    """Subprocess: core's four post-processing helpers in order; one JSON line per stage on stdout."""
    device = torch.device(device_name)
    core = load_core(Path(comfy), device.type)
    data = torch.load(inp)
    v, f = data["vertices"].to(device), data["faces"].to(device).long()
    coords, attrs, res = data["coords"].to(device), data["attrs"].to(device), int(data["res"])
    faces, size = int(data["target_faces"]), int(data["texture_size"])
    clock = StageClock(device)

    def emit(name):
        print(json.dumps({"stage": name, **clock.stages[name]}), flush=True)

    print(json.dumps({"ready": True}), flush=True)
    v, f, _ = clock("FillHoles", lambda: core.post.fill_holes_v2_fn(v, f, max_perimeter=0.03, colors=None,
                                                                      weld_epsilon_rel=1e-5, fill_chains=False,
                                                                      max_verts=16))
    emit("FillHoles")
    rv, rf, *_ = clock("DecimateMesh", lambda: core.qem.qem_decimate_simplify(v, f.long(), faces, colors=None,
                                                                                config=core.qem.QEMConfig()))
    emit("DecimateMesh")
    vmap, idx, uvs = clock("UnwrapMesh", lambda: core.post._uv_unwrap(rv.float(), rf.long(), "pec", size, 1, 0.0))
    emit("UnwrapMesh")
    uvs = uvs.copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]  # as UnwrapMesh does
    av = rv.float().cpu()[torch.from_numpy(vmap.astype("int64"))]
    af = torch.from_numpy(idx.astype("int64"))
    auv = torch.from_numpy(uvs.astype("float32"))
    torch.save({"vertices": av, "faces": af, "uvs": auv}, outp)
    clock("BakeTextureFromVoxel", lambda: core.post.bake_texture_from_voxel_fn(
        av.to(device), af.to(device), coords, attrs, resolution=res, texture_size=size, uvs=auv.to(device)))
    emit("BakeTextureFromVoxel")


CORE_POST_STAGES = ("FillHoles", "DecimateMesh", "UnwrapMesh", "BakeTextureFromVoxel")


def core_post(mesh, voxels, faces: int, size: int, device: torch.device, comfy: Path, timeout: float,
              startup_timeout: float = 180.0) -> dict:
    """Run :func:`core_post_worker` in a subprocess; each stage must report within ``timeout`` s."""
    from benchmarks.atlas_quality import atlas_quality

    out: dict = {"stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.pt", Path(tmp) / "atlas.pt"
        torch.save({"vertices": mesh.vertices.cpu(), "faces": mesh.faces.cpu(), "coords": voxels.coords.cpu(),
                    "attrs": voxels.attrs.cpu(), "res": voxels.resolution, "target_faces": faces,
                    "texture_size": size}, inp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_core-post-worker", str(inp), str(outp),
               "--comfy-dir", str(comfy), "--device", str(device)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(_REPO),
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        err: list[str] = []
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
        pending = list(CORE_POST_STAGES)
        wait = startup_timeout
        try:
            while pending:
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    what = "start" if wait == startup_timeout else pending[0]
                    out["stages"][pending[0]] = {"note": f"did not finish in {wait:g} s" if what != "start" else
                                                 f"worker did not start in {wait:g} s"}
                    break
                if line is None:
                    out["stages"][pending[0]] = {"note": "failed: " + "".join(err)[-600:].strip()}
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue  # core's own prints
                if "stage" in msg:
                    out["stages"][msg.pop("stage")] = msg
                    pending.pop(0)
                wait = timeout
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in pending[1:]:
            out["stages"].setdefault(name, {"note": "not run"})
        if outp.exists():
            a = torch.load(outp)
            out["faces"] = int(a["faces"].shape[0])
            out["atlas"] = atlas_quality(a["vertices"].to(device), a["uvs"].to(device), a["faces"].to(device),
                                         size).to_dict()
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    lines = [f"Ours vs ComfyUI core 0.33.0 ({result['meta']['device']}, {result['meta']['gpu'] or 'CPU'}, "
             f"{'tiny' if result['meta']['tiny'] else 'full size'}, ours: {result['meta']['ours_mode']}"
             f"{' + compile' if result['meta']['compile'] else ''}, core: {result['meta']['core_dtype']})", "",
             "| part | stage | CFG | tokens | ours ms | core ms | core / ours | ours / core extra peak GB | "
             "ours / core weights GB | cosine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("dit", []) + result.get("decoders", []):
        core_ms = r.get("core_ms") if r.get("core_ms") is not None else r.get("core_note")
        ours_ms = r.get("ours_ms") if r.get("ours_ms") is not None else r.get("ours_note")
        ratio = f"{r['core_ms'] / r['ours_ms']:.2f}" if r.get("core_ms") and r.get("ours_ms") else "–"
        cos = r.get("cosine", "–" if r.get("same_voxels", True) else "voxels differ")
        lines.append(f"| {r['part']} | {r['stage']} | {r.get('cfg', '')} | {r['tokens']} | {ours_ms} | "
                     f"{core_ms} | {ratio} | {r.get('ours_peak_gb')} / {r.get('core_peak_gb')} | "
                     f"{r.get('ours_weights_gb')} / {r.get('core_weights_gb')} | {cos} |")
    post = result.get("post")
    if post:
        lines += ["", f"Post-processing: {post['input_faces']} faces → {post['target_faces']}, "
                      f"{post['texture_size']}² textures", "",
                  "| ours stage | ms | peak GB | core stage | ms | peak GB |", "|---|---|---|---|---|---|"]
        ours_st = list(post["ours"]["stages"].items())
        core_st = list(post["core"]["stages"].items())
        for i in range(max(len(ours_st), len(core_st))):
            o = ours_st[i] if i < len(ours_st) else ("", {})
            c = core_st[i] if i < len(core_st) else ("", {})
            lines.append(f"| {o[0]} | {o[1].get('ms', o[1].get('note', ''))} | {o[1].get('peak_gb', '')} | {c[0]} | "
                         f"{c[1].get('ms', c[1].get('note', ''))} | {c[1].get('peak_gb', '')} |")
        for who in ("ours", "core"):
            st = post[who]["stages"]
            if all("ms" in v for v in st.values()):
                total = sum(v["ms"] for k, v in st.items() if not k.startswith("export_glb"))
                lines.append(f"\n{who} total (stages): {total:.0f} ms")
        qa, qc = post["ours"].get("atlas"), post["core"].get("atlas")
        if qa or qc:
            lines += ["", "| atlas | ours | core |", "|---|---|---|"]
            for k in (qa or qc):
                lines.append(f"| {k} | {_fmt((qa or {}).get(k))} | {_fmt((qc or {}).get(k))} |")
    whole = result.get("whole")
    if whole:
        lines += ["", "Image → GLB composed from the parts above (every sampler step at the official settings; "
                      "conditioning, structure decoder and mesher left out of both):", "",
                  "| part | steps (batch-2 + batch-1) | ours ms | core ms | core / ours |", "|---|---|---|---|---|"]
        for name, p in whole["parts"].items():
            steps = f"{p['guided_steps']} + {p['unguided_steps']}" if "guided_steps" in p else ""
            ratio = f"{p['core_ms'] / p['ours_ms']:.2f}" if p.get("core_ms") and p.get("ours_ms") else "–"
            lines.append(f"| {name} | {steps} | {_fmt(p.get('ours_ms'))} | {_fmt(p.get('core_ms'))} | {ratio} |")
        ratio = f"{whole['core_over_ours']:.2f}" if whole.get("core_over_ours") else "–"
        lines.append(f"| **total** | | {_fmt(whole.get('ours_ms'))} | {_fmt(whole.get('core_ms'))} | **{ratio}** |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------------ whole path
def dit_passes() -> dict[str, tuple[int, int]]:
    """(guided steps: one batch-2 call each, unguided steps: one batch-1 call each) per DiT stage, from the official
    sampler settings (pipeline.json, spec §1.4) and our sampler's own schedule and interval rule."""
    from trellis2_core.loading.official import SAMPLERS
    from trellis2_core.pipeline.sampler import SamplerParams, timestep_pairs

    out = {}
    for stage, block in (("structure", "sparse_structure_sampler"), ("shape_lr", "shape_slat_sampler"),
                         ("shape_hr", "shape_slat_sampler"), ("texture", "tex_slat_sampler")):
        p = SamplerParams.from_pipeline(SAMPLERS[block])
        lo, hi = p.guidance_interval
        guided = sum(1 for t, _ in timestep_pairs(p.steps, p.rescale_t)
                     if p.guidance_strength != 1 and lo <= t <= hi)
        out[stage] = (guided, p.steps - guided)
    return out


def whole_path(result: dict) -> dict:
    """Image → GLB composed from this run's parts, the same way for both sides: every sampler step of every DiT
    stage (a guided step = one batch-2 forward, an unguided one = one batch-1 forward, half of "2 x batch 1"),
    both decoders, and the post-processing stages. Conditioning, the structure decoder and the mesher are left
    out of both (well under 1 % of either side). Missing parts make the total None."""
    rows = {(r["stage"], r.get("cfg")): r for r in result.get("dit", [])}
    rows.update({(r["stage"], None): r for r in result.get("decoders", [])})
    parts: dict[str, dict] = {}
    for stage, (guided, plain) in dit_passes().items():
        b2, b1x2 = rows.get((stage, "batch 2")), rows.get((stage, "2 x batch 1"))
        part = {"guided_steps": guided, "unguided_steps": plain}
        for who in ("ours", "core"):
            t2 = b2.get(f"{who}_ms") if b2 else None
            t1 = b1x2.get(f"{who}_ms") / 2 if b1x2 and b1x2.get(f"{who}_ms") is not None else None
            part[f"{who}_ms"] = (None if (guided and t2 is None) or (plain and t1 is None)
                                 else guided * (t2 or 0.0) + plain * (t1 or 0.0))
        parts[stage] = part
    for stage in ("shape_decoder", "tex_decoder"):
        r = rows.get((stage, None), {})
        parts[stage] = {"ours_ms": r.get("ours_ms"), "core_ms": r.get("core_ms")}
    post = result.get("post")
    if post:
        part = {}
        for who in ("ours", "core"):
            st = post[who]["stages"]
            ok = st and all("ms" in v for v in st.values())
            part[f"{who}_ms"] = sum(v["ms"] for k, v in st.items() if not k.startswith("export_glb")) if ok else None
        parts["post"] = part
    whole = {"parts": parts}
    for who in ("ours", "core"):
        values = [p[f"{who}_ms"] for p in parts.values()]
        whole[f"{who}_ms"] = None if any(v is None for v in values) or not post else sum(values)
    if whole["ours_ms"] and whole["core_ms"]:
        whole["core_over_ours"] = whole["core_ms"] / whole["ours_ms"]
    return whole


# ------------------------------------------------------------------------------------------------ main
ALL_STAGES = ("structure", "shape_lr", "shape_hr", "texture", "shape_decoder", "tex_decoder")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and token counts (CPU smoke run)")
    ap.add_argument("--comfy-dir", default=None, help="ComfyUI folder (default $COMFYUI_DIR, else .peer/ComfyUI)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: dit, decoders, post")
    ap.add_argument("--stages", default=",".join(ALL_STAGES), help="DiT / decoder stages to run")
    ap.add_argument("--hr", type=int, choices=(1024, 1536), default=1024, help="HR token count: 20 K / 47 K")
    ap.add_argument("--targets", default=None, help="N_LR,N_HR,finest voxels instead of --hr's (e.g. the end-to-end "
                    "benchmark's surrogate: 4001,14421,2500000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls after one warm-up")
    ap.add_argument("--ours-mode", choices=("fast", "reference"), default="fast")
    ap.add_argument("--compile", action="store_true", help="torch.compile our DiT blocks (fast mode)")
    ap.add_argument("--core-dtype", default=None, help="core's DiT weights/compute (default bf16; float32 on CPU)")
    ap.add_argument("--core-vae-dtype", default=None, help="core's decoders (default bf16; float32 on CPU)")
    ap.add_argument("--core-timeout", type=float, default=60.0,
                    help="seconds a core call (DiT, decoder) or post-processing stage may take")
    ap.add_argument("--post-res", type=int, default=None, help="grid of the synthetic surface (1024: ~3.7 M faces)")
    ap.add_argument("--faces", type=int, default=None, help="decimation target (default 500 000)")
    ap.add_argument("--texture-size", type=int, default=None, help="atlas size (default 2048)")
    ap.add_argument("--no-export-glb", action="store_true", help="skip our export_glb end-to-end run")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--md", default=None, help="write the markdown table here")
    ap.add_argument("--_core-post-worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    args.core_dtype = args.core_dtype or ("float32" if cpu else "bfloat16")
    args.core_vae_dtype = args.core_vae_dtype or ("float32" if cpu else "bfloat16")
    args.post_res = args.post_res or (64 if args.tiny else 1024)
    args.faces = args.faces or (2_000 if args.tiny else 500_000)
    args.texture_size = args.texture_size or (256 if args.tiny else 2048)
    args.stages = set(args.stages.split(","))
    args.skip = set(filter(None, args.skip.split(",")))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._core_post_worker:
        core_post_worker(*args._core_post_worker, args.comfy_dir, args.device)
        return {}
    from benchmarks.bench_pipeline import _TARGETS, _TARGETS_TINY, make_geometry
    from trellis2_core.loading import official
    from trellis2_core.pipeline.stages import PipelineType

    device = torch.device(args.device)
    comfy = comfy_dir(args.comfy_dir)
    t0 = time.perf_counter()
    core = load_core(comfy, device.type, post=False)
    specs = official.TINY if args.tiny else official.FULL
    result = {"meta": {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                       else None, "torch": torch.__version__, "tiny": args.tiny, "comfy_dir": str(comfy),
                       "ours_mode": args.ours_mode, "compile": args.compile, "core_dtype": args.core_dtype,
                       "core_vae_dtype": args.core_vae_dtype, "repeat": args.repeat, "hr": args.hr,
                       "core_timeout_s": args.core_timeout, "core_import_s": round(time.perf_counter() - t0, 1)}}
    state: dict = {}
    if not {"dit", "decoders"} <= args.skip:
        ptype = PipelineType.parse(f"{args.hr}_cascade")
        targets = (_TARGETS_TINY if args.tiny else _TARGETS)[ptype.name]
        if args.targets:
            targets = tuple(int(v) for v in args.targets.split(","))
            if len(targets) != 3:
                raise SystemExit("--targets: write N_LR,N_HR,VOXELS")
        t = time.perf_counter()
        geo = make_geometry(ptype, targets, device)
        result["meta"].update(geometry_s=round(time.perf_counter() - t, 1), n_lr=int(geo.lr_coords.shape[0]),
                              n_hr=int(geo.hr_coords.shape[0]), decoder_levels=geo.levels)
        print(f"geometry: N_LR {geo.lr_coords.shape[0]}, N_HR {geo.hr_coords.shape[0]}, decoder levels "
              f"{geo.levels}", flush=True)
        if "dit" not in args.skip:
            result["dit"] = bench_dits(core, specs, geo, device, args, state)
        if "decoders" not in args.skip:
            result["decoders"] = bench_decoders(core, specs, geo, device, args, state)
        del geo
        _free(device)
    if "post" not in args.skip:
        from benchmarks.bench_export import make_blob_surface

        mesh, voxels = make_blob_surface(args.post_res, device)
        print(f"post: {mesh.num_faces} faces, {voxels.coords.shape[0]} voxels", flush=True)
        post = {"input_faces": int(mesh.num_faces), "target_faces": args.faces, "texture_size": args.texture_size}
        try:
            post["ours"] = ours_post(mesh, voxels, args.faces, args.texture_size, device, not args.no_export_glb)
        except Exception as e:  # noqa: BLE001 - recorded; core's side still runs
            import traceback

            traceback.print_exc()
            post["ours"] = {"stages": {"failed": {"note": f"{type(e).__name__}: {str(e)[:200]}"}}}
        print("ours post:", json.dumps(post["ours"]["stages"]), flush=True)
        post["core"] = core_post(mesh, voxels, args.faces, args.texture_size, device, comfy, args.core_timeout)
        print("core post:", json.dumps(post["core"]["stages"]), flush=True)
        result["post"] = post
    result["whole"] = whole_path(result)
    md = markdown(result)
    print("\n" + md)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.md:
        Path(args.md).write_text(md)
    return result


if __name__ == "__main__":
    main()
