"""Chart clustering for UV unwrapping: parallel greedy merging of adjacent charts under a normal-cone limit.

Role of CuMesh ``compute_charts`` (§9.4 step 2), redesigned: every face starts as its own chart with a zero-width
normal cone; each round, every pair of adjacent charts gets the cone that bounds both (exact merge of two cones) and
a cost = merged half-angle + ``compactness``·(P²/(4πA) − 1) (P, A: merged perimeter and area; the term is 0 for a
disc and grows for ragged or elongated charts, which pack badly). Each chart proposes its cheapest admissible
neighbour (merged half-angle ≤ ``max_cone_angle``); pairs that chose each other merge. Rounds repeat until no pair
merges. Everything is whole-array torch work (one round ≈ 20 kernels), so it runs on CPU or GPU alike.

Why a cone bound: if every face normal n of a chart satisfies angle(n, a) ≤ θ < 90° for the chart axis a, the
orthographic projection onto the plane ⊥ a maps every triangle with the same orientation (signed area =
area · n·a > 0): no flipped UV triangle is possible, and the worst length distortion is 1/cos θ.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cancel import checkpoint
from ..errors import InputError
from ._graph import edge_table, face_geometry

__all__ = ["cluster_charts", "merge_cones"]


def merge_cones(a1: Tensor, t1: Tensor, a2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest cone containing the cones ``(a1 [N,3] unit axis, t1 [N] half-angle)`` and ``(a2, t2)``."""
    cos_phi = (a1 * a2).sum(-1).clamp(-1.0, 1.0)
    phi = torch.acos(cos_phi)  # angle between the axes
    theta = 0.5 * (phi + t1 + t2)
    turn = (theta - t1).clamp(min=0.0)  # rotate a1 towards a2 by this much
    sin_phi = torch.sin(phi).clamp(min=1e-12)
    axis = (torch.sin(phi - turn) / sin_phi)[:, None] * a1 + (torch.sin(turn) / sin_phi)[:, None] * a2
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    first_holds = t1 >= phi + t2
    second_holds = t2 >= phi + t1
    parallel = phi < 1e-6
    theta = torch.where(first_holds, t1, torch.where(second_holds, t2, theta))
    theta = torch.where(parallel & ~first_holds & ~second_holds, torch.maximum(t1, t2), theta)
    axis = torch.where((first_holds | parallel)[:, None], a1, torch.where(second_holds[:, None], a2, axis))
    return axis, theta


def _adjacency(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Face pairs across manifold, consistently wound edges: ``(fa [M], fb [M], shared edge length [M])``."""
    table = edge_table(faces, vertices.shape[0])
    ha, hb = table.manifold_pairs()
    consistent = table.halfedges[ha, 0] == table.halfedges[hb, 1]
    ha, hb = ha[consistent], hb[consistent]
    ends = table.halfedges[ha]
    length = (vertices[ends[:, 1]] - vertices[ends[:, 0]]).norm(dim=1)
    return ha // 3, hb // 3, length


def cluster_charts(
    vertices: Tensor,  # [V, 3] float32
    faces: Tensor,  # [F, 3] int
    max_cone_angle: float = math.radians(60.0),
    compactness: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group faces into charts whose normals fit a cone of half-angle ``max_cone_angle`` (< 90°).

    Returns ``(chart [F] int64 in 0..C-1, axis [C, 3] float32 unit cone axes, half_angle [C] float32)``. Charts are
    edge-connected. Degenerate faces (zero area) get the axis +z and join any neighbour whose cone allows it.
    """
    if not 0.0 < max_cone_angle < math.pi / 2:
        raise InputError(f"max_cone_angle must be in (0, pi/2) radians (1°..89°), got {max_cone_angle!r}")
    device = vertices.device
    nf = faces.shape[0]
    f64 = torch.float64
    cross, area = face_geometry(vertices.to(f64), faces)
    normal = cross / area[:, None].clamp(min=1e-300) * 0.5
    degenerate = area <= 0
    normal[degenerate] = torch.tensor([0.0, 0.0, 1.0], dtype=f64, device=device)
    p = vertices.to(f64)[faces.to(torch.int64)]
    perimeter = (p - p.roll(1, dims=1)).norm(dim=-1).sum(1)

    axis, theta, chart_area, chart_perim = normal, torch.zeros(nf, dtype=f64, device=device), area, perimeter
    label = torch.arange(nf, device=device)
    ea, eb, elen = _adjacency(vertices.to(f64), faces)
    while ea.numel() > 0:
        checkpoint("UV chart clustering")
        ca, cb = label[ea], label[eb]
        keep = ca != cb
        ea, eb, elen, ca, cb = ea[keep], eb[keep], elen[keep], ca[keep], cb[keep]
        if ea.numel() == 0:
            break
        key = torch.minimum(ca, cb) * nf + torch.maximum(ca, cb)
        pair_key, pair_of = torch.unique(key, return_inverse=True)
        shared = torch.zeros(pair_key.numel(), dtype=f64, device=device).index_add_(0, pair_of, elen)
        c0, c1 = pair_key // nf, pair_key % nf
        m_axis, m_theta = merge_cones(axis[c0], theta[c0], axis[c1], theta[c1])
        m_area = chart_area[c0] + chart_area[c1]
        m_perim = (chart_perim[c0] + chart_perim[c1] - 2.0 * shared).clamp(min=0.0)
        ragged = (m_perim.square() / (4.0 * math.pi * m_area.clamp(min=1e-300)) - 1.0).clamp(min=0.0)
        cost = (m_theta + compactness * ragged).to(torch.float32)
        ok = (m_theta <= max_cone_angle).nonzero().squeeze(1)
        if ok.numel() == 0:
            break
        # pack (cost, pair id) into one int64: non-negative float32 bit patterns sort like the floats
        packed = (cost[ok].clamp(min=0.0).view(torch.int32).to(torch.int64) << 32) | ok
        best = torch.full((nf,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        best.scatter_reduce_(0, c0[ok], packed, reduce="amin")
        best.scatter_reduce_(0, c1[ok], packed, reduce="amin")
        mutual = ok[(best[c0[ok]] == packed) & (best[c1[ok]] == packed)]
        if mutual.numel() == 0:
            break
        keep_id, drop_id = c0[mutual], c1[mutual]
        axis[keep_id] = m_axis[mutual]
        theta[keep_id] = m_theta[mutual]
        chart_area[keep_id] = m_area[mutual]
        chart_perim[keep_id] = m_perim[mutual]
        remap = torch.arange(nf, device=device)
        remap[drop_id] = keep_id
        label = remap[label]

    ids, chart = torch.unique(label, return_inverse=True)
    return chart, axis[ids].to(torch.float32), theta[ids].to(torch.float32)
