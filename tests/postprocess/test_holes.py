"""Small-hole filling (§8.2): loops under the perimeter threshold get a centroid fan, larger ones stay open."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.mesh.types import Mesh
from trellis2_core.postprocess import fill_holes
from trellis2_core.postprocess._graph import edge_table


def _boundary_edges(mesh: Mesh) -> int:
    return int((edge_table(mesh.faces, mesh.num_vertices).counts == 1).sum())


def _punch(vertices, faces, vertex: int):
    """Remove the faces around ``vertex``: a hole bounded by its one-ring."""
    keep = ~(faces == vertex).any(dim=1)
    return Mesh(vertices, faces[keep].contiguous()), int((~keep).sum())


def test_small_hole_is_fanned_around_the_mean_of_edge_midpoints(icosphere):
    v, f = icosphere(2)  # edge length ~0.08
    mesh, removed = _punch(v, f, 0)
    assert _boundary_edges(mesh) == removed  # a one-ring hole: one boundary edge per removed face
    table = edge_table(mesh.faces, mesh.num_vertices)
    ends = table.edges[table.counts == 1]
    perimeter = float((v[ends[:, 0]] - v[ends[:, 1]]).norm(dim=1).sum())

    out = fill_holes(mesh, max_perimeter=perimeter * 1.01)
    assert _boundary_edges(out) == 0
    assert out.num_vertices == mesh.num_vertices + 1 and out.num_faces == mesh.num_faces + removed
    # originals are kept as a prefix, in order
    assert torch.equal(out.vertices[: mesh.num_vertices], mesh.vertices)
    assert torch.equal(out.faces[: mesh.num_faces], mesh.faces)
    expected = (0.5 * (v[ends[:, 0]] + v[ends[:, 1]])).mean(0)
    torch.testing.assert_close(out.vertices[-1], expected, atol=1e-6, rtol=0)
    # every fan triangle uses the new centre and one boundary edge
    fan = out.faces[mesh.num_faces:]
    assert bool((fan[:, 2] == mesh.num_vertices).all())


def test_fan_winding_matches_the_surrounding_surface(icosphere):
    trimesh = pytest.importorskip("trimesh")

    v, f = icosphere(2)
    mesh, _ = _punch(v, f, 5)
    out = fill_holes(mesh, 1.0)
    t = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=False)
    assert t.is_watertight and t.is_winding_consistent and t.volume > 0


def test_holes_at_or_above_the_threshold_stay_open(icosphere):
    v, f = icosphere(2)
    mesh, removed = _punch(v, f, 0)
    table = edge_table(mesh.faces, mesh.num_vertices)
    ends = table.edges[table.counts == 1]
    perimeter = float((v[ends[:, 0]] - v[ends[:, 1]]).norm(dim=1).sum())
    out = fill_holes(mesh, max_perimeter=perimeter * 0.99)
    assert out is mesh and _boundary_edges(out) == removed


def test_only_the_small_one_of_two_holes_is_filled(icosphere):
    v, f = icosphere(3)
    small, _ = _punch(v, f, 0)  # one-ring of a valence-5 vertex: 5 edges, perimeter ~0.32
    mesh = Mesh(v, small.faces[~(v[small.faces.long()][:, :, 2] < -0.3).any(dim=1)].contiguous())  # cap: ~1.9
    before = _boundary_edges(mesh)
    assert fill_holes(mesh) is mesh  # the official 3e-2 fills neither
    out = fill_holes(mesh, 0.5)
    assert _boundary_edges(out) == before - 5 and out.num_vertices == mesh.num_vertices + 1


def test_zero_disables_and_negative_is_rejected(icosphere):
    v, f = icosphere(1)
    mesh, _ = _punch(v, f, 0)
    assert fill_holes(mesh, 0) is mesh
    with pytest.raises(ValueError, match=">= 0"):
        fill_holes(mesh, -1.0)


def test_closed_mesh_is_returned_unchanged(icosphere):
    v, f = icosphere(1)
    mesh = Mesh(v, f)
    assert fill_holes(mesh) is mesh
