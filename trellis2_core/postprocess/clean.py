"""Mesh clean-up passes (§9.2' branch B, §9.4 step 1): degenerate and duplicate faces, small components,
unreferenced vertices and face-orientation unification. Each pass returns a new :class:`Mesh`.

The dual-grid mesher emits unoriented surfaces (§8.1: the winding follows a fixed per-axis vertex order, so it flips
with the side the surface is seen from). Decimation quality, chart clustering by normal cones and single-sided
rendering all need consistent winding, so :func:`unify_orientation` runs before them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..cancel import checkpoint
from ..mesh.checks import check_mesh, check_number
from ..mesh.types import Mesh
from ._graph import edge_table, face_geometry, union_find

__all__ = [
    "remove_degenerate_faces",
    "remove_duplicate_faces",
    "remove_small_components",
    "remove_unreferenced_vertices",
    "unify_orientation",
    "clean_mesh",
]


def _keep_faces(mesh: Mesh, keep: Tensor) -> Mesh:
    if bool(keep.all()):
        return mesh
    return Mesh.unchecked(mesh.vertices, mesh.faces[keep].contiguous())


def remove_degenerate_faces(mesh: Mesh, abs_area: float = 1e-24, rel_area: float = 1e-12) -> Mesh:
    """Drop faces with a repeated vertex or with area ``< min(rel_area · ℓmax², abs_area)`` (§9.4 step 1), and
    faces of zero area (also three distinct vertices at one point, where that threshold is 0 too)."""
    if mesh.num_faces == 0:
        return mesh
    f = mesh.faces
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
    p = mesh.vertices[f.to(torch.int64)]  # [F, 3, 3]
    _, area = face_geometry(mesh.vertices, f)
    lmax2 = (p - p.roll(1, dims=1)).square().sum(-1).amax(dim=1)  # [F]
    tiny = (area < torch.clamp(rel_area * lmax2, max=abs_area)) | (area <= 0)
    return _keep_faces(mesh, ~(repeated | tiny))


def remove_duplicate_faces(mesh: Mesh) -> Mesh:
    """Keep the first of faces that use the same three vertices (in any order or winding)."""
    if mesh.num_faces == 0:
        return mesh
    s = torch.sort(mesh.faces.to(torch.int64), dim=1).values
    n = max(mesh.num_vertices, 1)
    if n < 2_000_000:  # n³ < 2⁶³: one packed key per face
        _, inv = torch.unique((s[:, 0] * n + s[:, 1]) * n + s[:, 2], return_inverse=True)
    else:
        _, inv = torch.unique(s, dim=0, return_inverse=True)
    device = inv.device
    first = torch.full((int(inv.max()) + 1,), mesh.num_faces, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, inv, torch.arange(mesh.num_faces, device=device), reduce="amin")
    keep = torch.zeros(mesh.num_faces, dtype=torch.bool, device=device)
    keep[first] = True
    return _keep_faces(mesh, keep)


def _face_components(mesh: Mesh) -> Tensor:
    """Component root per face (faces sharing an edge are connected)."""
    table = edge_table(mesh.faces, mesh.num_vertices)
    # every half-edge joins its face to the first face of its edge group
    first = table.order[table.starts][table.edge_of] // 3  # [3F]
    own = torch.arange(table.halfedges.shape[0], device=first.device) // 3
    root, _ = union_find(mesh.num_faces, own, first)
    return root


def remove_small_components(mesh: Mesh, min_area: float = 1e-5) -> Mesh:
    """Drop edge-connected face components whose total area is ``< min_area`` (world units², §9.2')."""
    if mesh.num_faces == 0 or min_area <= 0:
        return mesh
    root = _face_components(mesh)
    _, area = face_geometry(mesh.vertices, mesh.faces)
    total = torch.zeros(mesh.num_faces, dtype=torch.float64, device=area.device)
    total.index_add_(0, root, area.to(torch.float64))
    return _keep_faces(mesh, total[root] >= min_area)


def remove_unreferenced_vertices(mesh: Mesh) -> tuple[Mesh, Tensor]:
    """Drop vertices no face uses. Returns the mesh and ``kept`` ``[V']`` int64: old index of each new vertex."""
    check_mesh(mesh, "remove unreferenced vertices", allow_empty=True)
    device = mesh.vertices.device
    used = torch.zeros(mesh.num_vertices, dtype=torch.bool, device=device)
    used[mesh.faces.to(torch.int64).reshape(-1)] = True
    kept = used.nonzero().squeeze(1)
    if kept.numel() == mesh.num_vertices:
        return mesh, kept
    new_id = torch.full((mesh.num_vertices,), -1, dtype=torch.int64, device=device)
    new_id[kept] = torch.arange(kept.numel(), device=device)
    faces = new_id[mesh.faces.to(torch.int64)].to(torch.int32)
    return Mesh.unchecked(mesh.vertices[kept].contiguous(), faces), kept


def unify_orientation(mesh: Mesh, outward: bool = True) -> Mesh:
    """Make the winding consistent across every manifold edge, per edge-connected component.

    Union-find with parity over manifold face adjacency (an edge whose two faces run it in the same direction asks
    for one of them to flip); each face is flipped when its parity relative to its component root is odd. With
    ``outward`` each component is then flipped as a whole if its signed volume is negative, so closed shells face
    outwards (for open sheets the choice is arbitrary but deterministic).
    """
    check_mesh(mesh, "unify orientation", allow_empty=True)
    if mesh.num_faces == 0:
        return mesh
    f = mesh.faces
    table = edge_table(f, mesh.num_vertices)
    ha, hb = table.manifold_pairs()
    same_direction = (table.halfedges[ha, 0] == table.halfedges[hb, 0]).to(torch.int64)
    root, parity = union_find(mesh.num_faces, ha // 3, hb // 3, same_direction)
    flip = parity.bool()
    if outward:
        p = mesh.vertices.to(torch.float64)[f.to(torch.int64)]  # [F, 3, 3]
        vol = (p[:, 0] * torch.linalg.cross(p[:, 1], p[:, 2], dim=1)).sum(1)
        vol = torch.where(flip, -vol, vol)
        comp_vol = torch.zeros(mesh.num_faces, dtype=torch.float64, device=vol.device).index_add_(0, root, vol)
        flip = flip ^ (comp_vol[root] < 0)
    if not bool(flip.any()):
        return mesh
    faces = torch.where(flip[:, None], f[:, [0, 2, 1]], f)
    return Mesh.unchecked(mesh.vertices, faces.contiguous())


def clean_mesh(mesh: Mesh, min_component_area: float = 0.0, orient: bool = True) -> Mesh:
    """Degenerate faces → duplicate faces → (optional) small components → (optional) orientation, in that order.

    An empty mesh is returned unchanged; every face may be removed (the caller decides whether that is an error).
    Raises :class:`~trellis2_core.errors.InputError` for a corrupt mesh (NaN vertices, faces out of range).
    """
    check_mesh(mesh, "mesh clean-up", allow_empty=True)
    check_number(min_component_area, "min_component_area (0 disables)", 0.0, float("inf"))
    mesh = remove_degenerate_faces(mesh)
    mesh = remove_duplicate_faces(mesh)
    checkpoint("cleaning the mesh")
    if min_component_area > 0:
        mesh = remove_small_components(mesh, min_component_area)
        checkpoint("cleaning the mesh")
    return unify_orientation(mesh) if orient else mesh
