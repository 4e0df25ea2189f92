"""Narrow-band dual-contouring remesh (§9.2 branch A): closed, oriented shells at UDF = eps."""
from __future__ import annotations

import time

import pytest
import torch

from trellis2_core.errors import InputError
from trellis2_core.mesh.types import Mesh
from trellis2_core.postprocess.closest import closest_points
from trellis2_core.postprocess.remesh import _quads_to_triangles, base_resolution, remesh_frame, remesh_narrow_band

trimesh = pytest.importorskip("trimesh")


def _trimesh(mesh: Mesh):
    return trimesh.Trimesh(mesh.vertices.double().numpy(), mesh.faces.numpy(), process=False)


def _sphere(icosphere, subdivisions=3):
    v, f = icosphere(subdivisions)
    return Mesh(v, f)


def test_frame_and_base_grid_follow_the_official_numbers():
    scale, eps = remesh_frame(1024, 1.0)
    assert scale == pytest.approx(1.00293, abs=1e-5) and eps == pytest.approx(scale / 1024)
    assert [base_resolution(r) for r in (1024, 1536, 1408, 1280, 1152, 256, 64)] == [32, 24, 22, 20, 18, 32, 32]


def test_closed_sphere_becomes_two_closed_oriented_shells_at_plus_minus_eps(icosphere):
    res = 64
    out = remesh_narrow_band(_sphere(icosphere), res)
    _, eps = remesh_frame(res, 1.0)
    tm = _trimesh(out)
    assert tm.is_watertight and tm.is_winding_consistent
    parts = sorted(tm.split(only_watertight=False), key=lambda p: -abs(p.volume))
    assert len(parts) == 2  # UDF = eps around a closed surface: one shell outside, one inside
    outer, inner = parts
    assert outer.is_watertight and inner.is_watertight
    # normals point from UDF < eps to UDF > eps: the outer shell encloses positive volume, the inner one negative
    assert outer.volume > 0 and inner.volume < 0
    # distance to the input surface is eps everywhere (up to the linear interpolation of dual contouring)
    r_out, r_in = outer.vertices, inner.vertices
    d_out = closest_points(_sphere(icosphere).vertices, _sphere(icosphere).faces,
                           torch.tensor(r_out, dtype=torch.float32)).distance
    d_in = closest_points(_sphere(icosphere).vertices, _sphere(icosphere).faces,
                          torch.tensor(r_in, dtype=torch.float32)).distance
    for d in (d_out, d_in):
        assert float((d - eps).abs().max()) < 0.25 * eps
    # outward offset of the outer shell: its vertices lie outside the input sphere
    radius = torch.tensor(r_out).norm(dim=1)
    assert float(radius.min()) > 0.4 * 0.98  # icosphere faces are chords of r = 0.4


def test_open_sheet_becomes_a_closed_slab_of_twice_eps():
    res = 64
    g = torch.linspace(-0.3, 0.3, 13)
    x, y = torch.meshgrid(g, g, indexing="ij")
    v = torch.stack((x.reshape(-1), y.reshape(-1), torch.full((169,), 0.013)), 1)
    i = torch.arange(12)
    a = (i[:, None] * 13 + i[None, :]).reshape(-1)
    faces = torch.cat((torch.stack((a, a + 13, a + 14), 1), torch.stack((a, a + 14, a + 1), 1))).to(torch.int32)
    out = remesh_narrow_band(Mesh(v, faces), res)
    _, eps = remesh_frame(res, 1.0)
    tm = _trimesh(out)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    assert len(tm.split(only_watertight=False)) == 1
    z = out.vertices[:, 2]
    middle = (out.vertices[:, 0].abs() < 0.25) & (out.vertices[:, 1].abs() < 0.25)
    top, bottom = z[middle & (z > 0.013)], z[middle & (z < 0.013)]
    assert float((top - 0.013 - eps).abs().max()) < 0.05 * eps
    assert float((0.013 - bottom - eps).abs().max()) < 0.05 * eps
    thickness = float(top.mean() - bottom.mean())
    assert thickness == pytest.approx(2 * eps, rel=0.05)


def test_project_back_moves_vertices_onto_the_surface(icosphere):
    sphere = _sphere(icosphere)
    out = remesh_narrow_band(sphere, 64, project_back=1.0)
    d = closest_points(sphere.vertices, sphere.faces, out.vertices).distance
    assert float(d.max()) < 1e-5
    half = remesh_narrow_band(sphere, 64, project_back=0.5)
    _, eps = remesh_frame(64, 1.0)
    d_half = closest_points(sphere.vertices, sphere.faces, half.vertices).distance
    assert float((d_half - eps / 2).abs().max()) < 0.25 * eps


def test_quad_split_quirk_and_winding():
    """Split q0–q2 unless (q0, q1, q2) is degenerate; flag +1 reverses the winding (§9.2 step 6, §13 item 25)."""
    vertex = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [1.0, 1, 0], [0.0, 1, 0], [2.0, 0, 0]])
    quad = torch.tensor([[0, 1, 2, 3], [0, 1, 4, 3], [0, 1, 2, 3]])  # the second has q0, q1, q2 collinear
    tris = _quads_to_triangles(quad, torch.tensor([False, False, True]), vertex)
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3],  # split 1
                             [0, 1, 3], [3, 1, 4],  # split 2: (q0,q1,q3), (q3,q1,q2)
                             [0, 2, 1], [0, 3, 2]]  # split 1, reversed


def test_bad_inputs():
    tri = Mesh(torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]), torch.tensor([[0, 1, 2]], dtype=torch.int32))
    with pytest.raises(InputError, match="band"):
        remesh_narrow_band(tri, 64, band=0)
    with pytest.raises(InputError, match="project_back"):
        remesh_narrow_band(tri, 64, project_back=2)
    with pytest.raises(InputError, match="resolution"):
        remesh_narrow_band(tri, 3)
    with pytest.raises(InputError, match="empty"):
        remesh_narrow_band(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32)), 64)
    with pytest.raises(InputError, match="inside its grid"):
        remesh_narrow_band(Mesh(tri.vertices + 5, tri.faces), 64)


def test_res_256_sphere_in_seconds(icosphere):
    sphere = _sphere(icosphere, 4)  # 5 k faces
    start = time.process_time()
    out = remesh_narrow_band(sphere, 256)
    spent = time.process_time() - start
    assert _trimesh(out).is_watertight
    assert spent < 60.0, f"remesh at res 256 took {spent:.1f} s CPU"
