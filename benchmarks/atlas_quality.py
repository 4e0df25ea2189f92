"""Quality figures of a UV atlas, the same for any unwrapper (ours, ComfyUI core's, xatlas).

Input: the atlas mesh as unwrappers return it: ``positions [V, 3]`` (seam vertices duplicated, one copy per chart),
``uvs [V, 2]`` in [0, 1] and ``faces [F, 3]`` indexing both. Figures:

* ``coverage``: fraction of the ``size × size`` texels whose centre lies inside (or on) at least one UV triangle;
* ``stretch_*``: per-triangle texel density ``(UV area / 3D area) / (ΣUV area / Σ3D area)`` (1 = every triangle gets
  its fair share of texels); its 3D-area-weighted ``std/mean`` and its ``p95/p5`` ratio (triangles with zero 3D
  area are left out);
* ``flipped``: triangles whose signed UV area has the sign opposite to the majority of their UV island (islands:
  triangles joined through shared atlas vertices; mirrored whole islands are not flips), ``degenerate_uv``: zero
  UV area;
* ``seam_length``: total 3D length of the mesh edges (two faces meeting at welded-equal positions) whose two faces
  give an endpoint different UVs; ``islands``: number of UV islands; ``open_edges`` / ``nonmanifold_edges``: edges
  with one face / more than two (not seams).

All computations are float64 torch on the inputs' device; the rasteriser visits each triangle's texel bounding
box, in chunks.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

_CHUNK_TEXELS = 1 << 23


@dataclasses.dataclass
class AtlasQuality:
    faces: int
    coverage: float
    stretch_std_over_mean: float
    stretch_p95_over_p5: float
    flipped: int
    degenerate_uv: int
    seam_length: float
    islands: int
    open_edges: int
    nonmanifold_edges: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _signed_uv_area(uvs: Tensor, faces: Tensor) -> Tensor:
    q = uvs.double()[faces]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])


def _area_3d(positions: Tensor, faces: Tensor) -> Tensor:
    p = positions.double()[faces]
    return 0.5 * torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1).norm(dim=1)


def coverage(uvs: Tensor, faces: Tensor, size: int) -> float:
    """Fraction of texels whose centre ``((i + ½)/size, (j + ½)/size)`` is inside or on a UV triangle."""
    faces = faces.long()
    tri = uvs.double()[faces] * size  # texel units
    lo = (tri.amin(1) - 0.5).ceil().clamp(0, size - 1).long()  # first texel index whose centre ≥ min
    hi = (tri.amax(1) - 0.5).floor().clamp(-1, size - 1).long()
    ext = (hi - lo + 1).clamp(min=0)
    count = ext[:, 0] * ext[:, 1]
    covered = torch.zeros(size * size, dtype=torch.bool, device=uvs.device)
    ends = torch.cumsum(count, 0)
    start = 0
    n = faces.shape[0]
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, torch.tensor(base + _CHUNK_TEXELS, device=ends.device), right=True))
        stop = max(stop, start + 1)
        sel = torch.arange(start, min(stop, n), device=uvs.device)
        c = count[sel]
        if int(c.sum()) > 0:
            owner = torch.repeat_interleave(sel, c)
            k = torch.arange(owner.shape[0], device=uvs.device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
            w = ext[owner, 0]
            x = lo[owner, 0] + k % w
            y = lo[owner, 1] + k // w
            px, py = x.double() + 0.5, y.double() + 0.5
            t = tri[owner]
            e = []
            for a, b in ((0, 1), (1, 2), (2, 0)):
                e.append((t[:, b, 0] - t[:, a, 0]) * (py - t[:, a, 1]) - (t[:, b, 1] - t[:, a, 1]) * (px - t[:, a, 0]))
            e = torch.stack(e, 1)
            eps = 1e-9
            inside = (e >= -eps).all(1) | (e <= eps).all(1)
            covered[(y * size + x)[inside]] = True
        start = min(stop, n)
    return float(covered.double().mean())


def _islands(num_vertices: int, faces: Tensor) -> tuple[int, np.ndarray]:
    """UV islands (faces sharing an atlas vertex): (count, island id per face)."""
    from trellis2_core.postprocess._graph import union_find

    f = faces.long()
    nf = f.shape[0]
    corner_face = torch.arange(nf, device=f.device).repeat_interleave(3)
    first = torch.full((num_vertices,), nf, dtype=torch.int64, device=f.device)
    first.scatter_reduce_(0, f.reshape(-1), corner_face, "amin")  # one face per atlas vertex
    root, _ = union_find(nf, corner_face, first[f.reshape(-1)])
    used, label = torch.unique(root, return_inverse=True)
    return int(used.shape[0]), label.cpu().numpy()


def _weld(positions: Tensor) -> Tensor:
    """Geometric vertex id per atlas vertex: atlas vertices at exactly the same position share one."""
    _, inverse = torch.unique(positions.double(), dim=0, return_inverse=True)
    return inverse


def _edges(positions: Tensor, uvs: Tensor, faces: Tensor) -> tuple[float, int, int]:
    """(seam length, open edges, non-manifold edges)."""
    gid = _weld(positions)
    f = faces.long()
    a = torch.cat([f[:, 0], f[:, 1], f[:, 2]])
    b = torch.cat([f[:, 1], f[:, 2], f[:, 0]])
    ga, gb = gid[a], gid[b]
    swap = ga > gb
    lo_v, hi_v = torch.where(swap, b, a), torch.where(swap, a, b)  # atlas vertex at the lower / higher geometric id
    key = torch.minimum(ga, gb) * (int(gid.max()) + 1) + torch.maximum(ga, gb)
    key, order = torch.sort(key, stable=True)
    lo_v, hi_v = lo_v[order], hi_v[order]
    uniq, counts = torch.unique_consecutive(key, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    pairs = first[counts == 2]
    uv = uvs.double()
    tol = 1e-7
    differ = ((uv[lo_v[pairs]] - uv[lo_v[pairs + 1]]).abs().amax(1) > tol) | \
             ((uv[hi_v[pairs]] - uv[hi_v[pairs + 1]]).abs().amax(1) > tol)
    p = positions.double()
    seam = pairs[differ]
    length = float((p[lo_v[seam]] - p[hi_v[seam]]).norm(dim=1).sum())
    return length, int((counts == 1).sum()), int((counts > 2).sum())


def atlas_quality(positions: Tensor, uvs: Tensor, faces: Tensor, size: int) -> AtlasQuality:
    """All figures of the module docstring for one atlas at ``size × size`` texels."""
    faces = faces.long().to(uvs.device)
    positions = positions.to(uvs.device)
    signed = _signed_uv_area(uvs, faces)
    area3 = _area_3d(positions, faces)
    keep = area3 > 0
    ratio = signed.abs()[keep] / area3[keep]
    ratio = ratio / (signed.abs()[keep].sum() / area3[keep].sum())
    w = area3[keep] / area3[keep].sum()
    mean = float((w * ratio).sum())
    std = float((w * (ratio - mean) ** 2).sum().sqrt())
    r = ratio.cpu().numpy()
    p5, p95 = (np.percentile(r, [5, 95]) if r.size else (1.0, 1.0))
    n_islands, island = _islands(uvs.shape[0], faces)
    sign = np.sign(signed.cpu().numpy())
    pos = np.bincount(island, weights=(sign > 0), minlength=n_islands)
    neg = np.bincount(island, weights=(sign < 0), minlength=n_islands)
    flipped = int(np.minimum(pos, neg).sum())
    seam, open_edges, nonmanifold = _edges(positions, uvs, faces)
    return AtlasQuality(faces=int(faces.shape[0]), coverage=coverage(uvs, faces, size),
                        stretch_std_over_mean=std / mean if mean > 0 else float("nan"),
                        stretch_p95_over_p5=float(p95 / p5) if p5 > 0 else float("inf"),
                        flipped=flipped, degenerate_uv=int((signed == 0).sum()), seam_length=seam,
                        islands=n_islands, open_edges=open_edges, nonmanifold_edges=nonmanifold)
