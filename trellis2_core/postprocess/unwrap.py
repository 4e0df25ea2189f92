"""Fast UV unwrapping: normal-cone charts, orthographic projection per chart, horizon packing (role of §9.4).

The official path (CuMesh GPU chart clustering, then one xatlas ``parametrize`` per chart) is replaced by:

1. :func:`~trellis2_core.postprocess._charts.cluster_charts` — edge-connected charts whose face normals fit a
   cone of half-angle ≤ ``max_cone_angle`` (default 60°).
2. Orthographic projection of each chart onto the plane ⊥ its cone axis. Because every normal is within 60° of
   the axis, every projected triangle keeps its orientation (signed area = area·n·a ≥ area/2): **no UV triangle can
   flip**; texel stretch is at most 1/cos 60° = 2 along one direction.
3. Each chart is turned (16 angles in [0°, 90°)) to its smallest bounding box, rasterised conservatively into
   cells at pack resolution, and checked for self-overlap (a cone-bounded chart can still wrap over itself in
   projection, e.g. around a tube); overlapping charts are split at their mean along the main axis of their face
   centroids and re-checked until none overlap.
4. Horizon packing (:mod:`._pack`) with ``padding`` texels between charts; the atlas is sized for the final
   texture, repacked with a corrected scale when the first guess of the fill factor was off.

Degenerate input: zero-area (collinear or collapsed) faces are kept and get zero-area UV triangles inside their
chart (the bake then gives them no texel); charts that are segments or points are packed by the cells their
vertices and edge midpoints touch. The atlas scale is capped so that the longest chart fits across the atlas, so
slivers and huge or tiny coordinates cannot blow up the raster. NaN/Inf vertices, faces out of range and empty
meshes are :class:`~trellis2_core.errors.InputError`. Clustering rounds, overlap splits, the chart raster and the
packing poll for cancellation (:func:`~trellis2_core.cancel.checkpoint`).

UV convention (``TEXCOORD_0`` as written by :mod:`.glb`): ``uv = (x / W, y / H)`` where texel column ``c`` covers
``x ∈ [c, c+1)`` and row ``r`` covers ``y ∈ [r, r+1)``; row 0 is the first image row (v ≈ 0, §9.6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._kernels import kernels  # noqa: F401  (registers trellis2_kernels)
from ..cancel import checkpoint
from ..mesh.checks import check_int, check_mesh, check_number
from ..mesh.types import Mesh
from ._charts import cluster_charts
from ._graph import edge_table, union_find
from ._pack import pack_charts

from trellis2_kernels.uv_raster.reference import inside_triangle, triangle_boxes  # noqa: E402

__all__ = ["UvAtlas", "unwrap_uv", "count_flipped"]

_ANGLES = 16  # rotations tried per chart for the smallest bounding box
_MAX_SPLIT_ROUNDS = 12
_FILL_GUESS = 0.62  # first guess of (projected chart area) / (atlas area) after packing
_PACK_TRIES = 3  # packings with a corrected scale when the atlas came out too tall or too flat
_MIN_RATIO = 0.9  # accept atlases at least this tall relative to their width (the rest is stretched to square)
_CELL_BUDGET = 1 << 22  # candidate cells rasterised together (bounds temporary memory, one checkpoint each)


@dataclass(frozen=True)
class UvAtlas:
    """A mesh cut along chart seams, with UVs. Faces keep the input's face order."""

    vertices: Tensor  # [V', 3] float32; seam vertices are duplicated, one copy per chart
    faces: Tensor  # [F, 3] int32 into vertices / uvs
    uvs: Tensor  # [V', 2] float32 in [0, 1]
    vmap: Tensor  # [V'] int64: index of the source vertex of each UV vertex
    chart: Tensor  # [F] int64 chart id per face
    num_charts: int
    utilization: float  # UV area of all triangles / unit square (what fraction of the texture they cover)
    texture_size: int = 0  # texels per side the charts were packed for (padding is in its texels); 0 = unknown


def count_flipped(uvs: Tensor, faces: Tensor) -> int:
    """Number of UV triangles with non-positive signed area (clockwise in (u, v))."""
    q = uvs.to(torch.float64)[faces.to(torch.int64)]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    return int(((d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) <= 0).sum())


def _basis(axis: Tensor) -> tuple[Tensor, Tensor]:
    """Right-handed (t, b) with t × b = axis, per row of ``axis`` [C, 3]."""
    helper = torch.zeros_like(axis)
    use_x = axis[:, 0].abs() < 0.9
    helper[use_x, 0] = 1.0
    helper[~use_x, 1] = 1.0
    t = torch.linalg.cross(helper, axis, dim=1)
    t = t / t.norm(dim=1, keepdim=True)
    return t, torch.linalg.cross(axis, t, dim=1)


def _seg_min_max(values: Tensor, seg: Tensor, n: int) -> tuple[Tensor, Tensor]:
    lo = torch.full((n,), math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, seg, values, "amin")
    hi = torch.full((n,), -math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, seg, values, "amax")
    return lo, hi


def _project(vertices: Tensor, faces: Tensor, chart: Tensor, axis: Tensor):
    """Cut the mesh along chart borders and project each chart; local coords start at 0 (world units)."""
    num = axis.shape[0]
    corner_chart = chart[:, None].expand(-1, 3).reshape(-1)
    key = faces.to(torch.int64).reshape(-1) * num + corner_chart
    uniq, inverse = torch.unique(key, return_inverse=True)
    vmap, vchart = uniq // num, uniq % num
    t, b = _basis(axis.to(torch.float64))
    p = vertices.to(torch.float64)[vmap]
    u0, v0 = (p * t[vchart]).sum(1), (p * b[vchart]).sum(1)
    best_area = torch.full((num,), math.inf, dtype=torch.float64, device=p.device)
    best_angle = torch.zeros(num, dtype=torch.float64, device=p.device)
    for i in range(_ANGLES):
        a = i * (math.pi / 2) / _ANGLES
        x, y = math.cos(a) * u0 - math.sin(a) * v0, math.sin(a) * u0 + math.cos(a) * v0
        xl, xh = _seg_min_max(x, vchart, num)
        yl, yh = _seg_min_max(y, vchart, num)
        area = (xh - xl) * (yh - yl)
        better = area < best_area
        best_area = torch.where(better, area, best_area)
        best_angle = torch.where(better, torch.full_like(best_angle, a), best_angle)
    c, s = torch.cos(best_angle)[vchart], torch.sin(best_angle)[vchart]
    local = torch.stack((c * u0 - s * v0, s * u0 + c * v0), dim=1)
    lo_x, _ = _seg_min_max(local[:, 0], vchart, num)
    lo_y, _ = _seg_min_max(local[:, 1], vchart, num)
    local = local - torch.stack((lo_x, lo_y), dim=1)[vchart]
    return vmap, vchart, inverse.reshape(-1, 3), local


def _chart_cells(local_px: Tensor, faces_uv: Tensor, chart: Tensor, num: int):
    """Conservative cells of every chart and the charts that overlap themselves.

    ``local_px`` [V', 2] chart-local positions in cells. Returns numpy ``(cell_chart, cx, cy, box [C,2])`` and a
    bool [C] tensor of self-overlapping charts.
    """
    device = local_px.device
    tri = local_px[faces_uv.to(torch.int64)].to(torch.float32)  # [F, 3, 2]
    big = 1 << 24
    x0, x1, y0, y1 = triangle_boxes(tri, big, big)
    bw, bh = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    count = bw * bh
    side = int(local_px.max()) + 2  # every cell index (hits and marks) is below this
    hit_keys = []
    ends = torch.cumsum(count, 0)
    start = 0
    while start < tri.shape[0]:  # faces in chunks of about _CELL_BUDGET candidate cells
        checkpoint("UV chart rasterisation")
        stop = int(torch.searchsorted(ends, ends[start] - count[start] + _CELL_BUDGET, right=True))
        stop = min(max(stop, start + 1), tri.shape[0])
        n = count[start:stop]
        rep = start + torch.repeat_interleave(torch.arange(stop - start, device=device), n)
        local = torch.arange(rep.numel(), device=device) - (torch.cumsum(n, 0) - n)[rep - start]
        cx, cy = x0[rep] + local % bw[rep], y0[rep] + local // bw[rep]
        hit = inside_triangle(tri[rep], cx.to(torch.float32) + 0.5, cy.to(torch.float32) + 0.5)
        hit_keys.append((chart[rep][hit] * side + cx[hit]) * side + cy[hit])
        start = stop
    keys, counts = torch.unique(torch.cat(hit_keys) if hit_keys else chart.new_zeros(0), return_counts=True)
    owner = keys // (side * side)
    doubled = torch.zeros(num, dtype=torch.int64, device=device).index_add_(0, owner, (counts > 1).long())
    covered = torch.bincount(owner, minlength=num)
    overlap = doubled > torch.clamp(covered // 500, min=2)  # a few doubles come from centres exactly on edges
    # conservative extras: the cells of vertices and edge midpoints (slivers may cover no cell centre)
    marks = torch.cat((tri, 0.5 * (tri + tri.roll(1, dims=1))), dim=1).floor().to(torch.int64)  # [F, 6, 2]
    mchart = chart[:, None].expand(-1, 6).reshape(-1)
    mkey = (mchart * side + marks[..., 0].reshape(-1)) * side + marks[..., 1].reshape(-1)
    all_keys = torch.unique(torch.cat((keys, mkey)))
    cell_chart, rem = all_keys // (side * side), all_keys % (side * side)
    ccx, ccy = rem // side, rem % side
    box = torch.zeros(num, 2, dtype=torch.int64, device=device)
    box[:, 0].scatter_reduce_(0, cell_chart, ccx + 1, "amax")
    box[:, 1].scatter_reduce_(0, cell_chart, ccy + 1, "amax")
    to_np = lambda t: t.cpu().numpy()  # noqa: E731
    return (to_np(cell_chart), to_np(ccx), to_np(ccy), to_np(box)), overlap


def _split(vertices: Tensor, faces: Tensor, chart: Tensor, axis: Tensor, bad: Tensor, adjacency):
    """Halve every ``bad`` chart across the mean of its face centroids along their main axis; relabel by
    connectivity. Returns the new ``(chart [F], axis [C', 3])`` (pieces inherit their parent's cone axis)."""
    num = axis.shape[0]
    cen = vertices.to(torch.float64)[faces.to(torch.int64)].mean(1)  # [F, 3]
    sel = bad[chart]
    ids = chart[sel]
    c = cen[sel]
    cnt = torch.bincount(ids, minlength=num).clamp(min=1).to(torch.float64)
    mean = torch.zeros(num, 3, dtype=torch.float64, device=c.device).index_add_(0, ids, c) / cnt[:, None]
    d = c - mean[ids]
    cov = torch.zeros(num, 3, 3, dtype=torch.float64, device=c.device).index_add_(0, ids, d[:, :, None] * d[:, None])
    _, vecs = torch.linalg.eigh(cov + 1e-30 * torch.eye(3, dtype=torch.float64, device=c.device))
    main = vecs[:, :, 2]  # eigenvector of the largest eigenvalue
    side = ((d * main[ids]).sum(1) > 0).to(torch.int64)
    piece = chart * 2
    piece[sel] += side
    fa, fb = adjacency
    same = piece[fa] == piece[fb]
    root, _ = union_find(faces.shape[0], fa[same], fb[same])
    ids_new, new_chart = torch.unique(root, return_inverse=True)
    return new_chart, axis[chart[ids_new]]


def unwrap_uv(
    mesh: Mesh,
    texture_size: int = 2048,
    padding: int = 2,
    max_cone_angle: float = math.radians(60.0),
    compactness: float = 0.3,
) -> UvAtlas:
    """Cut ``mesh`` into charts and lay them out in the unit square for a ``texture_size``² texture.

    ``padding`` is the minimum gap between charts in texels. Runs on the mesh's device (clustering, projection and
    rasterisation in torch; the packing itself, a few hundred profiles, on the CPU). Raises
    :class:`~trellis2_core.errors.InputError` for an empty mesh, NaN/Inf vertices, faces out of range or bad
    settings; degenerate faces are handled (module docstring).
    """
    check_mesh(mesh, "UV unwrap")
    texture_size = check_int(texture_size, "unwrap texture_size", 16, 16384)
    padding = check_int(padding, "unwrap padding (texels)", 0, 256)
    check_number(max_cone_angle, "unwrap max_cone_angle (radians)", 0.0, math.pi / 2 - 1e-6, open_lo=True)
    check_number(compactness, "unwrap compactness", 0.0, 100.0)
    vertices, faces = mesh.vertices, mesh.faces
    chart, axis, _ = cluster_charts(vertices, faces, max_cone_angle, compactness)
    checkpoint("UV unwrapping")
    table = edge_table(faces, mesh.num_vertices)
    ha, hb = table.manifold_pairs()
    adjacency = (ha // 3, hb // 3)

    # pack cells across the atlas: ~12 cells per face keeps the conservative raster tight while bounding its cost
    grid = min(texture_size, 1024, max(512, 1 << math.ceil(math.log2(math.sqrt(12 * mesh.num_faces)))))
    pad_cells = max(1, math.ceil(padding * grid / texture_size))
    scale = None
    for split_round in range(_MAX_SPLIT_ROUNDS + 1):
        vmap, vchart, faces_uv, local = _project(vertices, faces, chart, axis)
        checkpoint("UV unwrapping")
        if scale is None:
            scale = _initial_scale(local, faces_uv, grid)
        cells, overlap = _chart_cells(local * scale, faces_uv, chart, axis.shape[0])
        if split_round == _MAX_SPLIT_ROUNDS or not bool(overlap.any()):
            break  # (after the last round, left-over overlaps are accepted: later faces win in the bake)
        checkpoint("UV chart splitting")
        num_before = axis.shape[0]
        chart, axis = _split(vertices, faces, chart, axis, overlap, adjacency)
        if axis.shape[0] == num_before:
            break  # nothing could be split (e.g. duplicate faces): more rounds would change nothing

    tries = []
    for _ in range(_PACK_TRIES):
        placement = pack_charts(*cells, atlas_width=grid, pad=pad_cells)
        tries.append((placement, scale, cells[3]))
        ratio = placement.height / max(placement.width, 1)
        if _MIN_RATIO <= ratio <= 1.0:
            break
        scale *= 0.995 * math.sqrt(1.0 / max(ratio, 1e-6))
        cells, _ = _chart_cells(local * scale, faces_uv, chart, axis.shape[0])
    fitting = [t for t in tries if t[0].height <= t[0].width]
    placement, scale, box = max(fitting, key=lambda t: t[1]) if fitting else min(tries, key=lambda t: t[1])

    uvs = _place(local * scale, vchart, placement, box)
    q = uvs.to(torch.float64)[faces_uv]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    util = float((0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])).sum())
    return UvAtlas(
        vertices=vertices[vmap].contiguous(),
        faces=faces_uv.to(torch.int32).contiguous(),
        uvs=uvs,
        vmap=vmap,
        chart=chart,
        num_charts=int(axis.shape[0]),
        utilization=util,
        texture_size=int(texture_size),
    )


def _initial_scale(local: Tensor, faces_uv: Tensor, grid: int) -> float:
    """Cells per world unit so that the charts fill about ``_FILL_GUESS`` of the ``grid``² atlas, capped so that
    the longest chart fits across it (zero-area charts, long slivers); 1 when every chart is a single point."""
    q = local[faces_uv]
    d1, d2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    proj_area = float((0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).abs()).sum())
    longest = float(local.max()) if local.numel() else 0.0  # chart-local coordinates start at 0
    if not longest > 0.0:
        return 1.0
    cap = (grid - 2) / longest
    if not proj_area > 0.0:
        return cap
    return min(math.sqrt(_FILL_GUESS * grid * grid / proj_area), cap)


def _place(xy: Tensor, vchart: Tensor, placement, box: np.ndarray) -> Tensor:
    """Rotate chart-local cell coordinates like their cells, move them into place, normalise to [0, 1]."""
    device = xy.device
    rot = torch.from_numpy(placement.rotation).to(device)[vchart]
    off = torch.from_numpy(placement.offset).to(device=device, dtype=xy.dtype)[vchart]
    wh = torch.from_numpy(box).to(device=device, dtype=xy.dtype)[vchart]
    x, y, w, h = xy[:, 0], xy[:, 1], wh[:, 0], wh[:, 1]
    rx = torch.where(rot == 0, x, torch.where(rot == 1, h - y, torch.where(rot == 2, w - x, y)))
    ry = torch.where(rot == 0, y, torch.where(rot == 1, x, torch.where(rot == 2, h - y, w - x)))
    size = torch.tensor([placement.width, max(placement.height, 1)], dtype=xy.dtype, device=device)
    uv = (torch.stack((rx, ry), dim=1) + off) / size
    return uv.clamp(0.0, 1.0).to(torch.float32).contiguous()
