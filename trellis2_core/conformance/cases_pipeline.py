"""Conformance handler for whole-pipeline golden cases (kind ``pipeline``; spec §1).

Runs :meth:`Pipeline.run_from_conditioning` on the case's fixed ``cond_512``/``cond_1024`` with the pipeline.json
sampler defaults and returns the mesher output (before hole filling), the PBR voxels, the latents and, as ``aux.*``,
the intermediate noise draws, samples, model-call traces and subdivision logits.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..loading import PipelineConfig
from ..pipeline.pipeline import DEFAULT_MAX_NUM_TOKENS, Pipeline, PipelineResult
from ..pipeline.stages import Conditioning, SamplingRun, StageHooks
from ..sparse import SparseTensor
from .case import Case

__all__ = ["run_pipeline", "pipeline_outputs"]


def _put_sparse(out: dict[str, Tensor], name: str, x: SparseTensor, *, coords: bool = True) -> None:
    if coords:
        out[f"{name}.coords"] = x.coords
    out[f"{name}.feats"] = x.feats


def _put_run(out: dict[str, Tensor], stage: str, run: SamplingRun) -> None:
    if run.calls is not None:
        out[f"aux.calls.{stage}.t_model"] = torch.tensor([c.t_model for c in run.calls], dtype=torch.float32)
        out[f"aux.calls.{stage}.branch"] = torch.tensor([c.branch for c in run.calls], dtype=torch.int32)
    if isinstance(run.noise, SparseTensor):
        _put_sparse(out, f"aux.{stage}.noise", run.noise)
        _put_sparse(out, f"aux.{stage}.samples", run.samples, coords=False)  # type: ignore[arg-type]


def pipeline_outputs(res: PipelineResult) -> dict[str, Tensor]:
    """Golden-named tensors of a pipeline run (batch elements concatenated in row order)."""
    out: dict[str, Tensor] = {}
    dec = res.decoded
    verts, faces, base = [], [], 0
    for mesh in dec.meshes:
        verts.append(mesh.vertices)
        faces.append(mesh.faces + base)
        base += mesh.num_vertices
    out["output.mesh.vertices"] = torch.cat(verts) if verts else torch.empty(0, 3)
    out["output.mesh.faces"] = (torch.cat(faces) if faces else torch.empty(0, 3)).to(torch.int32)
    if dec.pbr:
        out["output.pbr.coords"] = torch.cat([p.coords for p in dec.pbr])
        out["output.pbr.attrs"] = torch.cat([p.attrs for p in dec.pbr])
        out["output.voxel_shape"] = torch.tensor(dec.pbr[0].voxel_shape, dtype=torch.int32)
    out["output.res"] = torch.tensor([dec.res], dtype=torch.int32)
    _put_sparse(out, "output.shape_slat", res.shape.slat)
    _put_sparse(out, "output.tex_slat", res.material.slat)
    out["aux.ss_noise"] = res.structure.run.noise  # type: ignore[assignment]
    out["aux.ss_latent"] = res.structure.latent
    out["aux.ss_logits"] = res.structure.logits
    if res.structure.run.calls is not None:
        _put_run(out, "ss", res.structure.run)
    for stage, run in res.shape.runs.items():
        _put_run(out, stage, run)
    _put_run(out, "tex", res.material.run)
    if res.shape.upsample_coords is not None:
        out["aux.upsample_coords"] = res.shape.upsample_coords
    for i, sub in enumerate(dec.subs):
        _put_sparse(out, f"aux.subs.{i}", sub)
    return out


def run_pipeline(case: Case) -> dict[str, Tensor]:
    """Whole pipeline from the case's conditioning, seed and pipeline type (DINOv3 and preprocessing skipped)."""
    p = case.params
    if "cond_512" not in case.inputs:
        raise InputError(f"case {case.name}: missing input tensor 'cond_512'")
    config = PipelineConfig.from_pipeline_json(case.pipeline_dir())
    pipe = Pipeline(config, case.model)
    cond = Conditioning(case.inputs["cond_512"], case.inputs.get("cond_1024"))
    res = pipe.run_from_conditioning(
        cond, seed=int(p.get("seed", 42)), pipeline_type=p.get("pipeline_type"),
        max_num_tokens=int(p.get("max_num_tokens", DEFAULT_MAX_NUM_TOKENS)), hooks=StageHooks(record_calls=True))
    return pipeline_outputs(res)
