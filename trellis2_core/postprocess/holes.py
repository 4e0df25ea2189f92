"""Small-hole filling: close every boundary loop shorter than a perimeter threshold with a centroid fan (§8.2).

The official step (CuMesh ``fill_holes(max_hole_perimeter=3e-2)``) runs twice: after decoding and at the start of
``to_glb`` (§13 item 26). A loop is a connected set of boundary edges (edges used by exactly one face) in which every
vertex has one incoming and one outgoing boundary edge. For a loop with perimeter ``< max_perimeter`` (world units;
the object lives in the unit cube) one vertex is added at the mean of the loop's edge midpoints and one triangle per
loop edge joins the edge to it. All original vertices and faces are kept, in order; new vertices and faces are
appended.

Deviation, on purpose: the official fan follows the stored (undirected) edge endpoint order, so its winding is
arbitrary; ours runs each boundary edge against the direction of the face that owns it (``(b, a, centre)`` for a
face edge ``a → b``), which matches the surrounding surface's orientation. Loops that are not simple cycles
(pinched boundaries through a non-manifold vertex) are left open.
"""
from __future__ import annotations

import torch

from ..cancel import checkpoint
from ..mesh.checks import check_mesh, check_number
from ..mesh.types import Mesh
from ._graph import edge_table, union_find

__all__ = ["fill_holes", "DEFAULT_MAX_HOLE_PERIMETER"]

DEFAULT_MAX_HOLE_PERIMETER = 3e-2  # §8.2, world units


def fill_holes(mesh: Mesh, max_perimeter: float = DEFAULT_MAX_HOLE_PERIMETER) -> Mesh:
    """Return a copy of ``mesh`` whose boundary loops with perimeter ``< max_perimeter`` are fan-filled.

    ``max_perimeter == 0`` disables the step (the input is returned unchanged), as does an empty mesh. Raises
    :class:`~trellis2_core.errors.InputError` for a negative/NaN perimeter or a corrupt mesh (NaN vertices, faces
    out of range). Non-manifold edges and pinched loops are left open; duplicate faces are kept.
    """
    check_number(max_perimeter, "fill_holes max_perimeter (0 disables)", 0.0, float("inf"))
    check_mesh(mesh, "fill holes", allow_empty=True)
    if max_perimeter == 0 or mesh.num_faces == 0:
        return mesh
    checkpoint("filling holes")
    vertices, faces = mesh.vertices, mesh.faces
    device = vertices.device
    nv = mesh.num_vertices
    table = edge_table(faces, nv)
    bh = table.boundary_halfedges()  # [B] half-edge ids
    if bh.numel() == 0:
        return mesh
    a, b = table.halfedges[bh, 0], table.halfedges[bh, 1]  # [B] face-order endpoints

    root, _ = union_find(nv, a, b)
    comp = root[a]  # [B] loop label (a vertex id)
    out_deg = torch.bincount(a, minlength=nv)
    in_deg = torch.bincount(b, minlength=nv)
    bad_vertex = (out_deg != 1) | (in_deg != 1)
    bad = torch.zeros(nv, dtype=torch.int64, device=device)
    bad.index_add_(0, comp, (bad_vertex[a] | bad_vertex[b]).to(torch.int64))  # any bad vertex poisons its loop

    pa, pb = vertices[a].to(torch.float64), vertices[b].to(torch.float64)
    length = (pb - pa).norm(dim=1)  # [B]
    perimeter = torch.zeros(nv, dtype=torch.float64, device=device).index_add_(0, comp, length)
    fill = (bad[comp] == 0) & (perimeter[comp] < max_perimeter)  # [B] per boundary edge
    if not bool(fill.any()):
        return mesh

    comp_f, a_f, b_f = comp[fill], a[fill], b[fill]
    loops, loop_of = torch.unique(comp_f, return_inverse=True)  # [L], [Bf]
    mid = 0.5 * (pa[fill] + pb[fill])  # [Bf, 3]
    count = torch.bincount(loop_of, minlength=loops.numel()).to(torch.float64)
    centre = torch.zeros(loops.numel(), 3, dtype=torch.float64, device=device).index_add_(0, loop_of, mid)
    centre = (centre / count[:, None]).to(vertices.dtype)  # [L, 3]

    centre_id = nv + loop_of  # [Bf]
    fan = torch.stack((b_f, a_f, centre_id), dim=1).to(torch.int32)  # [Bf, 3]
    return Mesh.unchecked(torch.cat((vertices, centre), 0), torch.cat((faces, fan), 0))
