"""Closest points on a triangle mesh (§9.1 step 3, §9.5 step 3): the exact point–triangle answer and the grid
search, both against brute force."""
from __future__ import annotations

import math

import pytest
import torch

from trellis2_core.errors import InputError
from trellis2_core.postprocess.closest import TriangleGrid, closest_point_on_triangles, closest_points


def _brute_force(vertices, faces, points):
    """Distance to every face by the point–triangle routine, min over faces: ``(distance [Q], face [Q])``."""
    tri = vertices[faces.long()]  # [m, 3, 3]
    q, m = points.shape[0], faces.shape[0]
    p = points.repeat_interleave(m, 0)
    a, b, c = (tri[:, k].repeat(q, 1) for k in range(3))
    point, _ = closest_point_on_triangles(p, a, b, c)
    d = (point - p).norm(dim=1).view(q, m)
    return d.min(1)


def _small_triangle_soup(n_faces, size, generator):
    """Random small triangles (what the remesher and the baker see), float64."""
    centre = torch.rand(n_faces, 1, 3, generator=generator, dtype=torch.float64)
    corner = centre + (torch.rand(n_faces, 3, 3, generator=generator, dtype=torch.float64) - 0.5) * size
    return corner.reshape(-1, 3), torch.arange(3 * n_faces, dtype=torch.int32).view(-1, 3)


def test_point_triangle_matches_an_independent_reference():
    trimesh = pytest.importorskip("trimesh")
    g = torch.Generator().manual_seed(1)
    tri = torch.rand(3000, 3, 3, generator=g, dtype=torch.float64)
    points = torch.rand(3000, 3, generator=g, dtype=torch.float64) * 2 - 0.5
    point, bary = closest_point_on_triangles(points, tri[:, 0], tri[:, 1], tri[:, 2])
    reference = torch.from_numpy(trimesh.triangles.closest_point(tri.numpy(), points.numpy()))
    torch.testing.assert_close(point, reference, atol=1e-9, rtol=0)
    assert float(bary.min()) >= -1e-12 and torch.allclose(bary.sum(1), torch.ones(3000, dtype=torch.float64))
    torch.testing.assert_close((bary[:, :, None] * tri).sum(1), point, atol=1e-12, rtol=0)


def test_point_triangle_regions_by_hand():
    a, b, c = torch.tensor([[0.0, 0, 0]]), torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 1, 0]])
    cases = {(0.2, 0.2, 3.0): (0.2, 0.2, 0.0),  # interior: straight down
             (-1.0, -1.0, 0.5): (0.0, 0.0, 0.0),  # vertex a
             (2.0, -0.5, 0.0): (1.0, 0.0, 0.0),  # vertex b
             (0.5, -2.0, 1.0): (0.5, 0.0, 0.0),  # edge ab
             (1.0, 1.0, 0.0): (0.5, 0.5, 0.0)}  # edge bc
    for p, expected in cases.items():
        point, _ = closest_point_on_triangles(torch.tensor([p]), a, b, c)
        torch.testing.assert_close(point, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_degenerate_triangles_answer_with_their_segment_or_point():
    p = torch.tensor([[0.5, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    a = torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [1.0, 1, 1]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [1.0, 1, 1]], dtype=torch.float64)
    c = torch.tensor([[2.0, 0, 0], [1.0, 0, 0], [1.0, 1, 1]], dtype=torch.float64)  # collinear, collinear, point
    point, bary = closest_point_on_triangles(p, a, b, c)
    torch.testing.assert_close(point, torch.tensor([[0.5, 0, 0], [2.0, 0, 0], [1.0, 1, 1]], dtype=torch.float64))
    assert bool(torch.isfinite(bary).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_search_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    vertices, faces = _small_triangle_soup(300, 0.08, g)
    points = torch.rand(2000, 3, generator=g, dtype=torch.float64) * 1.4 - 0.2  # inside and outside the grid
    distance, _ = _brute_force(vertices, faces, points)
    for cell in (None, 0.02, 0.3):  # default, many rings, few large cells
        got = TriangleGrid(vertices, faces, cell).query(points)
        torch.testing.assert_close(got.distance, distance, atol=1e-6, rtol=0)
        own = (got.point - points).norm(dim=1)
        torch.testing.assert_close(own, got.distance)  # the reported point realises the distance
        tri = vertices[faces.long()][got.face]
        torch.testing.assert_close((got.bary[:, :, None] * tri).sum(1), got.point, atol=1e-12, rtol=0)


def test_grid_built_in_entry_batches_is_the_same_grid(monkeypatch):
    """The (face, cell) entries are expanded in bounded batches (the build's memory peak on big meshes): the tables
    must be exactly those of a one-batch build, so every query answers bit for bit the same."""
    import trellis2_core.postprocess.closest as closest

    g = torch.Generator().manual_seed(7)
    vertices, faces = _small_triangle_soup(400, 0.1, g)
    whole = TriangleGrid(vertices, faces, 0.03)
    monkeypatch.setattr(closest, "_ENTRY_BATCH", 37)  # many batches of a few faces each
    batched = TriangleGrid(vertices, faces, 0.03)
    assert whole.entry_face.numel() > 10 * 37
    for name in ("face_id", "entry_face", "cell_keys", "cell_start", "cell_count", "tri", "bound"):
        assert torch.equal(getattr(whole, name), getattr(batched, name)), name
    points = torch.rand(500, 3, generator=g, dtype=torch.float64)
    a, b = whole.query(points), batched.query(points)
    assert torch.equal(a.distance, b.distance) and torch.equal(a.face, b.face)


def test_grid_search_with_large_and_degenerate_faces():
    g = torch.Generator().manual_seed(5)
    vertices = torch.rand(60, 3, generator=g, dtype=torch.float64)
    faces = torch.randint(0, 60, (90, 3), generator=g, dtype=torch.int32)  # big, overlapping, some degenerate
    faces[:5, 2] = faces[:5, 1]
    points = torch.rand(800, 3, generator=g, dtype=torch.float64) * 1.6 - 0.3
    distance, _ = _brute_force(vertices, faces, points)
    got = closest_points(vertices, faces, points, cell_size=0.05)
    torch.testing.assert_close(got.distance, distance, atol=1e-6, rtol=0)


def test_max_distance_reports_not_found():
    g = torch.Generator().manual_seed(3)
    vertices, faces = _small_triangle_soup(200, 0.1, g)
    points = torch.rand(1500, 3, generator=g, dtype=torch.float64) * 1.4 - 0.2
    distance, _ = _brute_force(vertices, faces, points)
    got = TriangleGrid(vertices, faces).query(points, max_distance=0.05)
    inside = distance < 0.05
    assert bool(inside.any()) and bool((~inside).any())
    assert torch.equal(got.found, inside)
    torch.testing.assert_close(got.distance[inside], distance[inside], atol=1e-6, rtol=0)
    assert bool(torch.isinf(got.distance[~inside]).all()) and bool((got.face[~inside] == -1).all())
    assert torch.equal(got.point[~inside], points[~inside])


def test_float32_mesh_is_close_to_the_float64_answer(icosphere):
    v, f = icosphere(3)
    g = torch.Generator().manual_seed(4)
    points = torch.randn(5000, 3, generator=g) * 0.3
    got = closest_points(v, f, points)
    ref = closest_points(v.double(), f, points.double())
    torch.testing.assert_close(got.distance.double(), ref.distance, atol=2e-6, rtol=0)
    # a sphere's faces are tangent planes: points outside project onto the face below them
    assert float((got.point.norm(dim=1) - 0.4).abs().max()) < 0.4 * (1 - math.cos(math.radians(10)))


def test_bad_inputs_are_clear_errors():
    v = torch.rand(4, 3)
    f = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(InputError, match="at least one face"):
        TriangleGrid(v, f[:0])
    with pytest.raises(InputError, match="index vertices"):
        TriangleGrid(v, f + 5)
    with pytest.raises(InputError, match="faces must be an integer"):
        TriangleGrid(v, f.float())
    with pytest.raises(InputError, match="NaN"):
        TriangleGrid(torch.full((3, 3), float("nan")), f)
    with pytest.raises(InputError, match=r"points must be a float tensor \[Q, 3\]"):
        TriangleGrid(v, f).query(torch.rand(5, 2))
    with pytest.raises(InputError, match="max_distance"):
        TriangleGrid(v, f).query(torch.rand(5, 3), max_distance=0)


def test_large_mesh_in_bounded_time(make_blob):
    """~60 k faces, 200 k queries near the surface (the baking workload, scaled down)."""
    import time

    mesh, _ = make_blob(128)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    fid = torch.randint(0, mesh.num_faces, (n,), generator=g)
    w = torch.rand(n, 3, generator=g)
    w = w / w.sum(1, keepdim=True)
    points = (mesh.vertices[mesh.faces[fid].long()] * w[:, :, None]).sum(1)
    points = points + torch.randn(n, 3, generator=g) * 0.5 / 128
    start = time.process_time()
    got = TriangleGrid(mesh.vertices, mesh.faces).query(points, max_distance=4 / 128)
    assert time.process_time() - start < 30.0  # ~2 s idle on one core
    assert bool(got.found.all())
    sample = torch.arange(0, n, 997)  # spot-check against brute force
    distance, _ = _brute_force(mesh.vertices.double(), mesh.faces, points[sample].double())
    torch.testing.assert_close(got.distance[sample].double(), distance, atol=1e-6, rtol=0)
