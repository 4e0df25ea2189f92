"""Narrow-band dual-contouring remesh of the hole-filled mesh (§9.2, official geometry branch A, ``remesh=True``).

Official rule (``cumesh.remeshing.remesh_narrow_band_dc``), with ``scale = (res + 3·band)/res · extent``:

1. ``eps = band·scale/res``; the new surface is the iso-surface ``UDF = eps`` of the unsigned distance to the mesh,
   a closed shell around every surface (an open sheet becomes a slab ≈ 2·eps thick; a closed surface gets an outer
   shell at +eps and an inner one at −eps, both facing away from the thickened material).
2. Sparse narrow band by octree refinement: a base grid (``res`` halved while > 32), cells kept when the centre
   satisfies ``|UDF(centre) − eps| < 0.87·cell``, children of kept cells tested at the next level, down to ``res``.
3. ``s = UDF(corner) − eps`` at the unique corners of the kept cells.
4. Simple dual contouring: per cell the mean of the linear sign-change crossings on its 12 edges (centre if none);
   per axis a flag for the edge at the cell's max corner in the other two axes (+1: ``s`` goes from < 0 to ≥ 0
   along +axis, −1: the reverse).
5. Quads around flagged edges with the mesher's offset table (:data:`~trellis2_core.mesh.mesher.QUAD_OFFSETS`), all
   four cells kept; unreferenced dual vertices dropped; world ``(v/res − 0.5)·scale + centre``.
6. Triangles ``(q0,q1,q2),(q0,q2,q3)`` (reversed winding for flag +1); the official split choice compares normals
   computed from the wrong columns, so this split is used unless ``(q0,q1,q2)`` is degenerate, then
   ``(q0,q1,q3),(q3,q1,q2)`` — reproduced here (§13 item 25).
7. ``project_back > 0`` moves every vertex that fraction of the way to its closest point on the original mesh.

Why our coarse levels differ but the mesh does not: UDF is 1-Lipschitz, so every cell that touches a sign-change
edge contains a point with ``UDF = eps`` and passes the centre test at every level (``0.866 < 0.87``). The output is
therefore the dual contour of *all* sign-change edges of the ``res`` grid, whatever superset the coarse levels keep.
We keep a cheap superset at every level (cells within reach of a triangle's bounding box) and apply the exact
centre test once, at the finest level, to cut the number of corners whose exact UDF is needed.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cancel import checkpoint
from ..errors import InputError
from ..mesh.checks import check_mesh
from ..mesh.mesher import QUAD_OFFSETS
from ..mesh.types import Mesh
from .closest import TriangleGrid, sorted_positions

__all__ = ["remesh_narrow_band", "remesh_frame", "base_resolution"]

_CENTRE_SLACK = 0.87  # official keep test: |UDF(centre) − eps| < 0.87·cell
_BASE_MAX = 32  # the base grid is res halved while larger than this
_CORNER_BITS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1))  # b = x+2y+4z
# the 12 cell edges as (corner bit, corner bit), low end first, grouped by axis
_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))
_MAX_CORNER_EDGES = ((6, 7), (5, 7), (3, 7))  # per axis: the edge at the max corner in the other two axes


def base_resolution(resolution: int) -> int:
    """The octree's base grid: ``resolution`` halved while it is larger than 32 and even (1024 → 32, 1536 → 24)."""
    r = resolution
    while r > _BASE_MAX and r % 2 == 0:
        r //= 2
    return r


def remesh_frame(resolution: int, band: float, extent: float = 1.0) -> tuple[float, float]:
    """``(scale, eps)`` of the official remesh frame: ``scale = (res + 3·band)/res · extent``, ``eps = band·scale/res``."""
    scale = (resolution + 3 * band) / resolution * extent
    return scale, band * scale / resolution


def _keys(cells: Tensor, radix: int) -> Tensor:
    return (cells[:, 0] * radix + cells[:, 1]) * radix + cells[:, 2]


def _near_triangles(cells: Tensor, level: int, box_lo: Tensor, box_hi: Tensor, reach: float, scale: float,
                    center: Tensor) -> Tensor:
    """Mask of ``cells`` (grid ``level``) whose centre may lie within ``reach`` of a triangle: some triangle box
    overlaps a cell within Chebyshev distance ``k = ceil(reach/cell − 0.5)``. A superset of the exact test."""
    size = scale / level
    lo = torch.floor((box_lo - center + scale / 2) / size).clamp(0, level - 1).to(torch.int64)
    hi = torch.floor((box_hi - center + scale / 2) / size).clamp(0, level - 1).to(torch.int64)
    span = hi - lo + 1
    per_face = span.prod(1)
    if int(per_face.sum()) > 16 * box_lo.shape[0] + (1 << 20):  # huge triangles: keep everything at this level
        return torch.ones(cells.shape[0], dtype=torch.bool, device=cells.device)
    owner = torch.repeat_interleave(torch.arange(per_face.numel(), device=cells.device), per_face)
    rank = torch.arange(owner.numel(), device=cells.device) - (torch.cumsum(per_face, 0) - per_face)[owner]
    sp = span[owner]
    occ = lo[owner] + torch.stack((rank % sp[:, 0], (rank // sp[:, 0]) % sp[:, 1], rank // (sp[:, 0] * sp[:, 1])), 1)
    occupied = torch.unique(_keys(occ, level + 2))
    k = max(1, math.ceil(reach / size - 0.5))
    r = torch.arange(-k, k + 1, device=cells.device)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    keep = torch.zeros(cells.shape[0], dtype=torch.bool, device=cells.device)
    for off in offsets:  # (2k+1)³ lookups, k is 1 at the usual band
        checkpoint("remeshing")
        nb = cells + off
        inside = ((nb >= 0) & (nb < level)).all(1)
        keep |= inside & (sorted_positions(occupied, _keys(nb.clamp(0, level - 1), level + 2)) >= 0)
    return keep


def _children(cells: Tensor) -> Tensor:
    bits = torch.tensor(_CORNER_BITS, dtype=torch.int64, device=cells.device)
    return (cells[:, None, :] * 2 + bits).reshape(-1, 3)


def _narrow_band(grid: TriangleGrid, box_lo: Tensor, box_hi: Tensor, resolution: int, scale: float, eps: float,
                 center: Tensor) -> Tensor:
    """Kept cells ``[N, 3]`` int64 of the ``resolution`` grid (step 2): a cheap superset at the coarse levels, the
    exact centre test at the finest (fewer corners to evaluate than any cheap superset there)."""
    dev = box_lo.device
    level = base_resolution(resolution)
    r = torch.arange(level, device=dev)
    cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    while True:
        checkpoint("remeshing")
        reach = eps + _CENTRE_SLACK * scale / level
        cells = cells[_near_triangles(cells, level, box_lo, box_hi, reach, scale, center)]
        if level >= resolution:
            break
        cells = _children(cells)
        level *= 2
    centre = ((cells.to(grid.dtype) + 0.5) / level - 0.5) * scale + center
    udf = grid.query(centre, reach).distance
    return cells[(udf - eps).abs() < _CENTRE_SLACK * scale / level]


def _dual_contour(cells: Tensor, s_cell: Tensor) -> tuple[Tensor, Tensor]:
    """Step 4: dual vertices ``[N, 3]`` (grid units) and per-axis flags ``[N, 3]`` (-1, 0, +1) of kept cells, from
    ``s`` at their 8 corners ``[N, 8]`` (corner bit order x + 2y + 4z)."""
    bits = torch.tensor(_CORNER_BITS, dtype=s_cell.dtype, device=cells.device)  # [8, 3]
    edges = torch.tensor(_EDGES, device=cells.device)  # [12, 2]
    s0, s1 = s_cell[:, edges[:, 0]], s_cell[:, edges[:, 1]]  # [N, 12]
    cross = (s0 < 0) != (s1 < 0)
    t = torch.where(cross, s0 / torch.where(cross, s0 - s1, torch.ones_like(s0)), torch.zeros_like(s0))
    p = bits[edges[:, 0]] + t[..., None] * (bits[edges[:, 1]] - bits[edges[:, 0]])  # [N, 12, 3] in the cell
    w = cross.to(s_cell.dtype)
    n = w.sum(1, keepdim=True)
    local = torch.where(n > 0, (p * w[..., None]).sum(1) / n.clamp(min=1), torch.full_like(p[:, 0], 0.5))
    vertex = cells.to(s_cell.dtype) + local
    mc = torch.tensor(_MAX_CORNER_EDGES, device=cells.device)
    lo, hi = s_cell[:, mc[:, 0]] < 0, s_cell[:, mc[:, 1]] < 0  # [N, 3]
    flag = (lo & ~hi).to(torch.int8) - (~lo & hi).to(torch.int8)
    return vertex, flag


def _quads_to_triangles(quad: Tensor, positive: Tensor, vertex: Tensor) -> Tensor:
    """Step 6: two triangles per quad ``[L, 4]`` with the official split rule and winding."""
    q0, q1, q2, q3 = quad.unbind(1)
    normal = torch.linalg.cross(vertex[q1] - vertex[q0], vertex[q2] - vertex[q0], dim=1)
    split1 = (normal != 0).any(1)  # the official comparison picks split 1 unless (q0, q1, q2) is degenerate
    a = torch.where(split1[:, None], torch.stack((q0, q1, q2), 1), torch.stack((q0, q1, q3), 1))
    b = torch.where(split1[:, None], torch.stack((q0, q2, q3), 1), torch.stack((q3, q1, q2), 1))
    a = torch.where(positive[:, None], a[:, [0, 2, 1]], a)  # flag +1: reversed winding
    b = torch.where(positive[:, None], b[:, [0, 2, 1]], b)
    return torch.stack((a, b), 1).reshape(-1, 3)


def remesh_narrow_band(mesh: Mesh, resolution: int, band: float = 1.0, project_back: float = 0.0,
                       center: tuple[float, float, float] = (0.0, 0.0, 0.0), extent: float = 1.0,
                       grid: TriangleGrid | None = None) -> Mesh:
    """The iso-surface ``UDF = eps`` of ``mesh`` by narrow-band dual contouring at ``resolution`` (§9.2 branch A).

    ``mesh`` is the hole-filled original in a box of side ``extent`` around ``center`` (TRELLIS.2: the unit cube,
    ``resolution`` = the voxel grid ``res``); ``band`` is the offset in cells (official 1); ``project_back`` in
    [0, 1] (official demo 0). ``grid`` reuses a :class:`TriangleGrid` of ``mesh``. The result is closed and
    consistently oriented (normals point from ``UDF < eps`` to ``UDF > eps``).
    """
    check_mesh(mesh, "remesh")
    if not isinstance(resolution, int) or not 8 <= resolution <= 4096:
        raise InputError(f"remesh resolution must be an int in 8..4096, got {resolution!r}")
    if not (math.isfinite(band) and 0 < band <= 4):
        raise InputError(f"remesh band must be in (0, 4] cells, got {band!r}")
    if not (math.isfinite(project_back) and 0 <= project_back <= 1):
        raise InputError(f"remesh project_back must be in [0, 1], got {project_back!r}")
    dev, dtype = mesh.vertices.device, mesh.vertices.dtype
    grid = grid or TriangleGrid(mesh.vertices, mesh.faces)
    scale, eps = remesh_frame(resolution, band, extent)
    ctr = torch.tensor(center, dtype=dtype, device=dev)
    tri = mesh.vertices[mesh.faces.to(torch.int64)]
    cells = _narrow_band(grid, tri.amin(1), tri.amax(1), resolution, scale, eps, ctr)
    if cells.shape[0] == 0:
        raise InputError("remesh found no surface inside its grid; the mesh must lie inside the unit cube")

    # step 3: s at the unique corners of the kept cells
    bits = torch.tensor(_CORNER_BITS, dtype=torch.int64, device=dev)
    corner_keys = _keys((cells[:, None, :] + bits).reshape(-1, 3), resolution + 1)
    uniq, corner_of = torch.unique(corner_keys, return_inverse=True)
    r1 = resolution + 1
    corner = torch.stack((uniq // (r1 * r1), (uniq // r1) % r1, uniq % r1), 1)
    size = scale / resolution
    # a corner on a sign-change edge is within one cell of a point with UDF < eps: search eps + one cell (+1 %)
    reach = eps + 1.01 * size
    udf = grid.query((corner.to(dtype) / resolution - 0.5) * scale + ctr, reach).distance
    s = torch.where(torch.isfinite(udf), udf - eps, torch.full_like(udf, reach - eps))
    vertex, flag = _dual_contour(cells, s[corner_of.view(-1, 8)])

    # step 5: quads around flagged edges whose four cells are kept
    cell_keys, order = torch.sort(_keys(cells, resolution))
    row, axis = (flag != 0).nonzero().unbind(1)
    offsets = torch.tensor(QUAD_OFFSETS, dtype=torch.int64, device=dev)  # [3, 4, 3]
    nb = cells[row][:, None, :] + offsets[axis]  # [L, 4, 3]
    inside = ((nb >= 0) & (nb < resolution)).all(-1)
    pos = sorted_positions(cell_keys, _keys(nb.clamp(0, resolution - 1).reshape(-1, 3), resolution)).view(-1, 4)
    ok = (inside & (pos >= 0)).all(1)
    quad = order[pos[ok].clamp(min=0)]
    faces = _quads_to_triangles(quad, flag[row[ok], axis[ok]] > 0, vertex)
    if faces.shape[0] == 0:
        raise InputError("remesh produced no faces (is the mesh smaller than one grid cell?)")
    used, faces = torch.unique(faces.reshape(-1), return_inverse=True)
    verts = (vertex[used] / resolution - 0.5) * scale + ctr
    if project_back > 0:
        hit = grid.query(verts, eps + 2 * size)
        verts = torch.where(hit.found[:, None], verts + project_back * (hit.point - verts), verts)
    return Mesh.unchecked(verts.to(torch.float32).contiguous(), faces.view(-1, 3).to(torch.int32).contiguous())
