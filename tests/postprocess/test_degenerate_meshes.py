"""Adversarial meshes through every mesh step (fill holes, clean, decimate, unwrap, bake, export, write): each gets
a correct result or a one-line InputError that says what is wrong, never a deep crash (IndexError, OverflowError,
ValueError from numpy/torch) and never an empty mesh passed on silently."""
from __future__ import annotations

import math

import pytest
import torch

from trellis2_core.errors import InputError
from trellis2_core.mesh.types import Mesh, PbrVoxels
from trellis2_core.postprocess import (
    ExportConfig, bake_pbr_textures, clean_mesh, count_flipped, decimate_mesh, export_glb, fill_holes,
    remove_unreferenced_vertices, unify_orientation, unwrap_uv, vertex_normals, write_glb,
)

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("fast_simplification")

SMALL = ExportConfig(target_faces=2000, texture_size=256)


def _mesh(vertices, faces, checked: bool = True) -> Mesh:
    v = torch.tensor(vertices, dtype=torch.float32)
    f = torch.tensor(faces, dtype=torch.int32).reshape(-1, 3)
    return Mesh(v, f) if checked else Mesh.unchecked(v, f)


def _sphere(icosphere, scale: float = 1.0, sub: int = 2) -> Mesh:
    v, f = icosphere(sub)
    return Mesh(v * scale, f)


def _assert_atlas(atlas, mesh: Mesh) -> None:
    """A usable atlas: one UV per output vertex, finite, inside the unit square; faces in range."""
    assert atlas.faces.shape == mesh.faces.shape
    assert bool(torch.isfinite(atlas.uvs).all()) and float(atlas.uvs.min()) >= 0 and float(atlas.uvs.max()) <= 1
    assert int(atlas.faces.max()) < atlas.uvs.shape[0] and atlas.num_charts >= 1
    assert torch.equal(atlas.vertices, mesh.vertices[atlas.vmap])


def _exported(tmp_path, mesh: Mesh, voxels: PbrVoxels, cfg: ExportConfig = SMALL, name: str = "x.glb"):
    report = export_glb(mesh, voxels, tmp_path / name, cfg)
    scene = trimesh.load(tmp_path / name)
    (loaded,) = scene.geometry.values()
    assert loaded.faces.shape[0] == report.faces > 0
    return report


# ---------------------------------------------------------------------------------------------- empty
def test_empty_mesh(tmp_path, blob48):
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32))
    assert fill_holes(empty) is empty and clean_mesh(empty).num_faces == 0  # nothing to do is a correct result
    assert unify_orientation(empty) is empty and remove_unreferenced_vertices(empty)[0].num_faces == 0
    for step in (lambda: decimate_mesh(empty, 10), lambda: unwrap_uv(empty, 256),
                 lambda: export_glb(empty, blob48[1], tmp_path / "e.glb", SMALL)):
        with pytest.raises(InputError, match="empty"):
            step()
    with pytest.raises(InputError, match="no faces"):
        bake_pbr_textures(torch.zeros(3, 2), torch.zeros(0, 3, dtype=torch.int32), torch.zeros(3, 3), blob48[1], 64)
    assert list(tmp_path.iterdir()) == []


def test_vertices_without_faces_are_empty_too(tmp_path, blob48):
    lone = Mesh(torch.rand(5, 3) - 0.5, torch.zeros(0, 3, dtype=torch.int32))
    with pytest.raises(InputError, match="empty"):
        export_glb(lone, blob48[1], tmp_path / "e.glb", SMALL)


# ---------------------------------------------------------------------------------------------- tiny meshes
def test_one_triangle(tmp_path, blob48):
    tri = _mesh([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]], [[0, 1, 2]])
    assert decimate_mesh(tri, 1) is tri  # already at the target
    atlas = unwrap_uv(tri, 256)
    _assert_atlas(atlas, tri)
    assert atlas.num_charts == 1 and count_flipped(atlas.uvs, atlas.faces) == 0
    report = _exported(tmp_path, tri, blob48[1], ExportConfig(target_faces=0, texture_size=256,
                                                              fill_holes_perimeter=0.0))
    assert report.faces == 1


def test_one_triangle_whose_hole_gets_filled_exports(tmp_path, blob48):
    tri = _mesh([[0.0, 0.0, 0.0], [0.005, 0.0, 0.0], [0.0, 0.005, 0.0]], [[0, 1, 2]])
    filled = fill_holes(tri)  # perimeter 0.017 < 0.03: the open triangle is closed by a fan
    assert filled.num_faces == 4
    assert _exported(tmp_path, tri, blob48[1]).faces >= 1


# ---------------------------------------------------------------------------------------------- degenerate faces
COLLINEAR = ([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]], [[0, 1, 2]])
POINT = ([[0.1, 0.1, 0.1]] * 3, [[0, 1, 2]])


@pytest.mark.parametrize("vertices, faces", [COLLINEAR, POINT], ids=["collinear", "collapsed-to-a-point"])
def test_zero_area_only_meshes_unwrap_and_refuse_to_export(tmp_path, blob48, vertices, faces):
    mesh = _mesh(vertices, faces)
    _assert_atlas(unwrap_uv(mesh, 256), mesh)
    assert clean_mesh(mesh).num_faces == 0  # degenerate faces are dropped by the clean-up …
    with pytest.raises(InputError, match="no faces are left"):  # … so the export says why it has nothing
        export_glb(mesh, blob48[1], tmp_path / "d.glb", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_collinear_faces_inside_a_real_mesh(tmp_path, icosphere, blob48):
    sphere = _sphere(icosphere)
    v = sphere.vertices
    f = sphere.faces
    # three slivers: a collinear face on an existing edge's line, one with a repeated vertex, one tiny needle
    extra_v = torch.cat((v, 0.5 * (v[f[0, 0]] + v[f[0, 1]])[None], v[f[5, 0]][None] * 1.0000001))
    a, b, m, n = int(f[0, 0]), int(f[0, 1]), v.shape[0], v.shape[0] + 1
    slivers = torch.tensor([[a, m, b], [a, a, b], [int(f[5, 0]), n, int(f[5, 1])]], dtype=torch.int32)
    mesh = Mesh(extra_v, torch.cat((f, slivers)))
    atlas = unwrap_uv(mesh, 512)
    _assert_atlas(atlas, mesh)
    assert count_flipped(atlas.uvs[:, :], atlas.faces[: f.shape[0]]) == 0  # the real faces keep their winding
    # the repeated-vertex face is cleaned away; float32 slivers with a real (tiny) area may stay
    assert f.shape[0] <= _exported(tmp_path, mesh, blob48[1]).faces <= f.shape[0] + 2


def test_very_long_sliver_does_not_blow_up_the_atlas(icosphere):
    sphere = _sphere(icosphere, 0.01)
    v = torch.cat((sphere.vertices, torch.tensor([[1e6, 0.0, 0.0]])))
    far = torch.tensor([[0, 1, v.shape[0] - 1]], dtype=torch.int32)
    mesh = Mesh(v, torch.cat((sphere.faces, far)))
    _assert_atlas(unwrap_uv(mesh, 512), mesh)


# ---------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_vertices_are_one_line_input_errors_everywhere(tmp_path, icosphere, blob48, bad):
    sphere = _sphere(icosphere)
    v = sphere.vertices.clone()
    v[7, 1] = bad
    mesh = Mesh(v, sphere.faces)
    steps = {
        "fill holes": lambda: fill_holes(mesh),
        "clean": lambda: clean_mesh(mesh),
        "decimate": lambda: decimate_mesh(mesh, 50),
        "unwrap": lambda: unwrap_uv(mesh, 256),
        "export": lambda: export_glb(mesh, blob48[1], tmp_path / "n.glb", SMALL),
        "orientation": lambda: unify_orientation(mesh),
    }
    for name, step in steps.items():
        with pytest.raises(InputError, match="NaN or infinite") as info:
            step()
        assert "\n" not in str(info.value), name
    assert list(tmp_path.iterdir()) == []


def test_non_finite_bake_and_write_inputs(tmp_path, oriented_blob):
    mesh, voxels = oriented_blob
    atlas = unwrap_uv(mesh, 256)
    uvs = atlas.uvs.clone()
    uvs[3, 0] = float("nan")
    with pytest.raises(InputError, match="uvs contain NaN"):
        bake_pbr_textures(uvs, atlas.faces, atlas.vertices, voxels, 256)
    pos = atlas.vertices.clone()
    pos[0, 2] = float("inf")
    with pytest.raises(InputError, match="positions contain NaN"):
        bake_pbr_textures(atlas.uvs, atlas.faces, pos, voxels, 256)
    tex = bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, voxels, 256)
    normals = vertex_normals(mesh)[atlas.vmap]
    with pytest.raises(InputError, match="NaN or infinite"):
        write_glb(tmp_path / "w.glb", pos, atlas.faces, normals, atlas.uvs, tex.base_color, tex.metallic_roughness)
    assert list(tmp_path.iterdir()) == []


def test_nan_in_pbr_voxel_attributes(tmp_path, oriented_blob):
    mesh, voxels = oriented_blob
    attrs = voxels.attrs.clone()
    attrs[10, 2] = float("nan")
    bad = PbrVoxels(voxels.coords, attrs, voxels.resolution)
    atlas = unwrap_uv(mesh, 256)
    with pytest.raises(InputError, match="1 PBR voxels have NaN"):
        bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, bad, 256)
    with pytest.raises(InputError, match="PBR voxels have NaN"):
        export_glb(mesh, bad, tmp_path / "v.glb", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_voxel_coordinates_outside_their_grid(tmp_path, oriented_blob):
    mesh, voxels = oriented_blob
    coords = voxels.coords.clone()
    coords[0, 0] = voxels.resolution + 50
    with pytest.raises(InputError, match="grid indices"):
        export_glb(mesh, PbrVoxels(coords, voxels.attrs, voxels.resolution), tmp_path / "v.glb", SMALL)


# ---------------------------------------------------------------------------------------------- topology
def test_non_manifold_edges_and_vertices(tmp_path, blob48):
    # a fan of three faces on one edge (non-manifold edge) plus a bow-tie through vertex 0 (non-manifold vertex)
    v = [[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, -0.1, 0], [0, 0, 0.1], [-0.1, 0, 0], [-0.1, -0.05, 0.02]]
    f = [[0, 1, 2], [1, 0, 3], [0, 1, 4], [0, 5, 6]]
    mesh = _mesh([[c * 1.0 for c in p] for p in v], f)
    assert fill_holes(mesh).num_faces >= mesh.num_faces
    assert clean_mesh(mesh).num_faces == 4
    _assert_atlas(unwrap_uv(mesh, 256), mesh)
    assert _exported(tmp_path, mesh, blob48[1]).faces == 4


def test_duplicate_faces(tmp_path, icosphere, blob48):
    sphere = _sphere(icosphere)
    f = sphere.faces
    dup = Mesh(sphere.vertices, torch.cat((f, f[:20], f[:5, [0, 2, 1]])))  # same faces, also reversed
    assert clean_mesh(dup).num_faces == f.shape[0]
    _assert_atlas(unwrap_uv(dup, 256), dup)
    assert decimate_mesh(dup, 100).num_faces > 0
    assert _exported(tmp_path, dup, blob48[1], ExportConfig(target_faces=0, texture_size=256)).faces == f.shape[0]


@pytest.mark.parametrize("faces", [[[0, 1, 9]], [[0, -1, 2]]], ids=["past-the-end", "negative"])
def test_out_of_range_face_indices(tmp_path, blob48, faces):
    v = [[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]
    with pytest.raises(InputError, match="index vertices"):
        _mesh(v, faces)  # the checked constructor refuses them
    mesh = _mesh(v, faces, checked=False)  # a mesh built without checks
    for step in (lambda: fill_holes(mesh), lambda: clean_mesh(mesh), lambda: decimate_mesh(mesh, 1),
                 lambda: unwrap_uv(mesh, 256), lambda: remove_unreferenced_vertices(mesh),
                 lambda: export_glb(mesh, blob48[1], tmp_path / "o.glb", SMALL)):
        with pytest.raises(InputError, match="index vertices"):
            step()
    with pytest.raises(InputError, match="index vertices"):
        bake_pbr_textures(torch.zeros(3, 2), mesh.faces, torch.zeros(3, 3), blob48[1], 64)


def test_wrong_types_and_dtypes_are_input_errors(blob48):
    with pytest.raises(InputError, match="float32"):
        Mesh(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.int32))
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        Mesh(torch.zeros(3, 2), torch.zeros(1, 3, dtype=torch.int32))
    for step in (lambda: unwrap_uv((torch.zeros(3, 3), torch.zeros(1, 3)), 256), lambda: decimate_mesh(None, 5),
                 lambda: fill_holes("mesh")):
        with pytest.raises(InputError, match="Mesh"):
            step()


@pytest.mark.parametrize("kwargs, match", [
    ({"target_faces": -5}, "target_faces"), ({"target_faces": 2.5}, "target_faces"),
    ({"target_faces": True}, "target_faces"), ({"aggressiveness": float("nan")}, "aggressiveness"),
])
def test_decimate_settings(icosphere, kwargs, match):
    with pytest.raises(InputError, match=match):
        decimate_mesh(_sphere(icosphere), **{"target_faces": 50, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"texture_size": 0}, "texture_size"), ({"padding": -1}, "padding"),
    ({"max_cone_angle": 0.0}, "max_cone_angle"), ({"max_cone_angle": math.pi}, "max_cone_angle"),
    ({"max_cone_angle": float("nan")}, "max_cone_angle"), ({"compactness": -1.0}, "compactness"),
])
def test_unwrap_settings(icosphere, kwargs, match):
    with pytest.raises(InputError, match=match):
        unwrap_uv(_sphere(icosphere), **kwargs)


def test_fill_holes_settings(icosphere):
    for bad in (-1.0, float("nan"), float("inf"), "big"):
        with pytest.raises(InputError, match="max_perimeter"):
            fill_holes(_sphere(icosphere), bad)


# ---------------------------------------------------------------------------------------------- decimation
@pytest.mark.parametrize("target", [1, 2])
def test_decimation_never_returns_an_empty_mesh(icosphere, target):
    sphere = _sphere(icosphere, sub=3)
    try:
        out = decimate_mesh(sphere, target)
    except InputError as err:
        assert "raise target_faces" in str(err)
    else:
        assert 0 < out.num_faces <= max(target, 4)


def test_export_with_a_tiny_face_target_is_a_clear_error_or_a_valid_file(tmp_path, blob48):
    mesh, voxels = blob48
    try:
        report = export_glb(mesh, voxels, tmp_path / "t.glb", ExportConfig(target_faces=1, texture_size=256))
    except InputError as err:
        assert "target_faces" in str(err) or "no faces are left" in str(err)
        assert list(tmp_path.iterdir()) == []
    else:
        assert report.faces > 0 and (tmp_path / "t.glb").is_file()


# ---------------------------------------------------------------------------------------------- coordinates
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e12, 1e30, 3e36])
def test_tiny_and_huge_coordinates_unwrap(icosphere, scale):
    mesh = _sphere(icosphere, scale)
    atlas = unwrap_uv(mesh, 256)
    _assert_atlas(atlas, mesh)
    if scale >= 1e-12:  # (at 1e-30 float32 areas underflow and faces may collapse to points)
        assert count_flipped(atlas.uvs, atlas.faces) == 0


@pytest.mark.parametrize("scale", [1e-6, 1e6, 1e20])
def test_tiny_and_huge_coordinates_clean_decimate_fill(icosphere, scale):
    mesh = _sphere(icosphere, scale, sub=3)
    assert fill_holes(mesh).num_faces == mesh.num_faces  # closed: nothing to fill
    assert clean_mesh(mesh).num_faces == mesh.num_faces
    out = decimate_mesh(mesh, 200)
    assert 0 < out.num_faces <= 200 and bool(torch.isfinite(out.vertices).all())


def test_export_refuses_a_mesh_far_outside_the_voxel_frame(tmp_path, icosphere, blob48):
    with pytest.raises(InputError, match="unit cube"):
        export_glb(_sphere(icosphere, 1e6), blob48[1], tmp_path / "h.glb", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_mesh_outside_the_voxels_still_writes_a_valid_file(tmp_path, icosphere, blob48):
    moved = _sphere(icosphere)
    moved = Mesh(moved.vertices + 5.0, moved.faces)  # no voxel nearby: textures fall back to 0, file stays valid
    assert _exported(tmp_path, moved, blob48[1]).faces == moved.num_faces
