"""Clean-up passes: orientation unification (union-find with parity), degenerate/duplicate faces, components."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.mesh.types import Mesh
from trellis2_core.postprocess._graph import union_find
from trellis2_core.postprocess.clean import (remove_degenerate_faces, remove_duplicate_faces,
                                             remove_small_components, remove_unreferenced_vertices,
                                             unify_orientation)


def _consistent(mesh: Mesh) -> bool:
    trimesh = pytest.importorskip("trimesh")

    return trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False).is_winding_consistent


def _volume(mesh: Mesh) -> float:
    p = mesh.vertices.double()[mesh.faces.long()]
    return float((p[:, 0] * torch.linalg.cross(p[:, 1], p[:, 2], dim=1)).sum() / 6)


def test_union_find_parity_on_a_cycle_and_two_components():
    # path 0-1-2-3 with relations 1,0,1 and a separate pair 4-5 with relation 1
    u = torch.tensor([0, 1, 2, 4])
    v = torch.tensor([1, 2, 3, 5])
    rel = torch.tensor([1, 0, 1, 1])
    root, parity = union_find(6, u, v, rel)
    assert root.tolist() == [0, 0, 0, 0, 4, 4]
    assert parity.tolist() == [0, 1, 1, 0, 0, 1]


def test_random_flips_are_undone_and_shells_face_outwards(icosphere):
    v, f = icosphere(2)
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(f.shape[0], generator=g) < 0.4
    scrambled = torch.where(flip[:, None], f[:, [0, 2, 1]], f)
    out = unify_orientation(Mesh(v, scrambled))
    assert _consistent(out) and _volume(out) > 0
    # a sphere wound inwards as a whole is turned outwards
    inward = unify_orientation(Mesh(v, f[:, [0, 2, 1]].contiguous()))
    assert _volume(inward) > 0


def test_dual_grid_surface_gets_consistent(blob48):
    mesh, _ = blob48
    assert not _consistent(mesh)  # the mesher's winding depends on the side (§8.1)
    out = unify_orientation(mesh)
    assert _consistent(out) and _volume(out) > 0


def test_degenerate_and_duplicate_faces_are_removed(icosphere):
    v, f = icosphere(1)
    extra = torch.tensor([[0, 0, 1], [3, 4, 5], [5, 3, 4], [4, 3, 5]], dtype=torch.int32)  # repeated index, dups
    collinear_v = torch.cat((v, torch.tensor([[0.0, 0, 0], [1e-13, 0, 0], [2e-13, 0, 0]])), 0)
    n = v.shape[0]
    flat = torch.tensor([[n, n + 1, n + 2]], dtype=torch.int32)  # zero area
    mesh = Mesh(collinear_v, torch.cat((f, extra, flat), 0))
    no_degenerate = remove_degenerate_faces(mesh)
    assert no_degenerate.num_faces == f.shape[0] + 3
    no_dups = remove_duplicate_faces(no_degenerate)
    assert no_dups.num_faces == f.shape[0] + 1  # [3,4,5] kept once (first occurrence)
    assert no_dups.faces[f.shape[0]].tolist() == [3, 4, 5]


def test_small_components_and_unreferenced_vertices(icosphere):
    v, f = icosphere(1)
    tiny_v = torch.tensor([[0.0, 0, 0.9], [1e-3, 0, 0.9], [0, 1e-3, 0.9]])
    n = v.shape[0]
    mesh = Mesh(torch.cat((v, tiny_v), 0), torch.cat((f, torch.tensor([[n, n + 1, n + 2]], dtype=torch.int32)), 0))
    out = remove_small_components(mesh, 1e-5)
    assert out.num_faces == f.shape[0]
    compact, kept = remove_unreferenced_vertices(out)
    assert compact.num_vertices == n and torch.equal(kept, torch.arange(n))
    torch.testing.assert_close(compact.vertices[compact.faces.long()], mesh.vertices[f.long()])
