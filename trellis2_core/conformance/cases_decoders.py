"""Conformance handlers for the decoder, mesher and cascade golden kinds (``ss_decoder``, ``shape_decoder``,
``mesher``, ``tex_decoder``, ``cascade``). Each returns the candidate tensors under the golden names."""
from __future__ import annotations

import json

import torch
from torch import Tensor

from ..mesh.mesher import flexible_dual_grid_to_mesh
from ..mesh.types import Mesh
from ..models.structure_decoder import occupancy_to_coords
from ..models.texture_decoder import raw_to_pbr
from ..pipeline.cascade import hr_coords_from_lr
from ..sparse import SparseTensor
from .case import Case

__all__ = ["run_ss_decoder", "run_shape_decoder", "run_mesher", "run_tex_decoder", "run_cascade"]


def _sparse(case: Case, name: str) -> SparseTensor:
    return SparseTensor(case.inputs[f"{name}.feats"], case.inputs[f"{name}.coords"])


def _put_sparse(out: dict[str, Tensor], name: str, x: SparseTensor) -> None:
    out[f"{name}.coords"] = x.coords
    out[f"{name}.feats"] = x.feats


def _concat_meshes(meshes: list[Mesh]) -> tuple[Tensor, Tensor]:
    """Vertices/faces of all batch elements in row order (faces re-indexed into the concatenated vertices)."""
    verts, faces, base = [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + base)
        base += m.num_vertices
    if not meshes:
        return torch.empty((0, 3)), torch.empty((0, 3), dtype=torch.int32)
    return torch.cat(verts), torch.cat(faces).to(torch.int32)


def run_ss_decoder(case: Case) -> dict[str, Tensor]:
    """Dense SS decoder logits and the occupancy coords at 64³ and pooled to 32³ (§5.1)."""
    model = case.model(case.params["model"])
    with torch.no_grad():
        logits = model(case.inputs["z"])
    out = {"output.logits": logits}
    size = logits.shape[2]
    for res in (size, size // 2):
        out[f"output.coords_{res}"] = occupancy_to_coords(logits, res)
    return out


def run_shape_decoder(case: Case) -> dict[str, Tensor]:
    """Shape decoder at ``params.resolution``: subdivision logits, raw 7-channel voxels and the mesh (§5.2, §8.1)."""
    model = case.model(case.params["model"])
    with torch.no_grad():
        dec = model.decode(_sparse(case, "latent"), int(case.params["resolution"]))
    out: dict[str, Tensor] = {}
    for i, sub in enumerate(dec.subs):
        _put_sparse(out, f"output.subs.{i}", sub)
    _put_sparse(out, "output.raw", dec.raw)
    out["output.mesh.vertices"], out["output.mesh.faces"] = _concat_meshes(dec.meshes)
    return out


def run_mesher(case: Case) -> dict[str, Tensor]:
    """The flexible-dual-grid mesher on teacher-forced inputs (§8.1)."""
    p = case.params
    x = case.inputs
    mesh = flexible_dual_grid_to_mesh(
        x["coords"], x["dual_vertices"], x["intersected"].to(torch.bool), x["split_weight"],
        grid_size=p["grid_size"], aabb=p.get("aabb", ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))),
    )
    return {"output.vertices": mesh.vertices, "output.faces": mesh.faces}


def run_tex_decoder(case: Case) -> dict[str, Tensor]:
    """Texture decoder guided by the given subdivision logits; raw output and PBR = raw·0.5+0.5 (§5.2)."""
    model = case.model(case.params["model"])
    subs = []
    i = 0
    while f"guide_subs.{i}.coords" in case.inputs:
        subs.append(_sparse(case, f"guide_subs.{i}"))
        i += 1
    with torch.no_grad():
        raw = model(_sparse(case, "latent"), guide_subs=subs or None)
    return {"output.raw.coords": raw.coords, "output.raw.feats": raw.feats, "output.pbr.feats": raw_to_pbr(raw.feats)}


def _shape_normalization(case: Case) -> tuple[Tensor, Tensor]:
    cfg = json.loads((case.pipeline_dir() / "pipeline.json").read_text())
    norm = cfg["args"]["shape_slat_normalization"]
    return (torch.tensor(norm["mean"], dtype=torch.float32)[None],
            torch.tensor(norm["std"], dtype=torch.float32)[None])


def run_cascade(case: Case) -> dict[str, Tensor]:
    """Denormalise the LR latent, ``upsample`` it with the shape decoder, then quantise per subcase (§1.3)."""
    model = case.model(case.params["model"])
    lr_resolution = int(case.params["lr_resolution"])
    mean, std = _shape_normalization(case)
    lr = _sparse(case, "lr_samples")
    slat = lr.replace(lr.feats * std + mean)  # §5.4 denormalisation, feats [N, 32]
    with torch.no_grad():
        up = model.upsample(slat, upsample_times=4)
    out = {"output.upsample_coords": up}
    for name, sub in case.params["cases"].items():
        coords, hr_res = hr_coords_from_lr(up, lr_resolution, int(sub["resolution"]), int(sub["max_num_tokens"]))
        out[f"output.{name}.coords"] = coords
        out[f"output.{name}.hr_res"] = torch.tensor([hr_res], dtype=torch.int32)
    return out
