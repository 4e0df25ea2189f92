"""Our meshes / PBR voxels in ComfyUI core's MESH / VOXEL layout and back (``postprocess.comfy_layout``)."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.errors import InputError
from trellis2_core.mesh.types import Mesh, PbrVoxels, TexturedMesh, y_up_to_z_up, z_up_to_y_up
from trellis2_core.postprocess import fill_holes, remove_unreferenced_vertices
from trellis2_core.postprocess.comfy_layout import (
    core_geometry, core_mesh_tensors, core_voxel_tensors, meshes_from_core, pbr_from_core_voxel,
)


def _with_loose_vertices(mesh: Mesh, extra: int = 50) -> Mesh:
    """The mesher's output shape: vertices no face uses (one per voxel) mixed in."""
    loose = torch.rand(extra, 3) - 0.5
    return Mesh(torch.cat((mesh.vertices, loose)), mesh.faces)


def test_axis_conversions_are_inverse():
    p = torch.randn(10, 3)
    torch.testing.assert_close(y_up_to_z_up(z_up_to_y_up(p)), p, atol=0, rtol=0)


def test_core_geometry_is_filled_compacted_with_counts(blob48):
    mesh, _ = blob48
    small = Mesh(mesh.vertices, mesh.faces[: mesh.num_faces // 2].contiguous())  # open: has holes
    items = [_with_loose_vertices(mesh), _with_loose_vertices(small)]
    core = core_geometry(items)
    expected = [remove_unreferenced_vertices(fill_holes(m))[0] for m in items]
    assert core.vertex_counts.tolist() == [m.num_vertices for m in expected]
    assert core.face_counts.tolist() == [m.num_faces for m in expected]
    assert core.vertices.shape == (2, max(m.num_vertices for m in expected), 3)
    for i, m in enumerate(expected):
        nv, nf = m.num_vertices, m.num_faces
        torch.testing.assert_close(core.vertices[i, :nv], z_up_to_y_up(m.vertices), atol=0, rtol=0)
        used = torch.zeros(nv, dtype=torch.bool)
        used[core.faces[i, :nf].reshape(-1)] = True
        assert bool(used.all()), "no unreferenced vertices"
        torch.testing.assert_close(core.normals[i, :nv].norm(dim=1), torch.ones(nv), atol=1e-5, rtol=0)
    back = meshes_from_core(core.vertices, core.faces, core.vertex_counts, core.face_counts)
    for got, m in zip(back, expected):
        torch.testing.assert_close(got.vertices, m.vertices, atol=1e-7, rtol=0)
        assert torch.equal(got.faces, m.faces)


def test_textured_items_carry_uvs_normals_and_textures():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    base = torch.zeros(8, 8, 4, dtype=torch.uint8)
    base[..., 0] = 255
    mr = torch.zeros(8, 8, 3, dtype=torch.uint8)
    mr[..., 1] = 51
    item = TexturedMesh(v, f, torch.tensor([[0, 0, 1.0]] * 3), torch.rand(3, 2), base, mr)
    core = core_mesh_tensors([item])
    assert core.texture.shape == (1, 8, 8, 3) and float(core.texture[0, 0, 0, 0]) == 1.0
    assert abs(float(core.metallic_roughness[0, 0, 0, 1]) - 0.2) < 1e-6
    torch.testing.assert_close(core.uvs[0], item.uvs)
    torch.testing.assert_close(core.normals[0], torch.tensor([[0, 1.0, 0]] * 3))  # +z (Z-up) is +y in glTF
    with pytest.raises(InputError, match="all textured or all untextured"):
        core_mesh_tensors([item, Mesh(v, f)])


def test_voxels_in_core_layout_sit_at_the_same_world_points():
    r = 16
    coords = torch.tensor([[0, 0, 0], [3, 5, 7], [15, 1, 9]], dtype=torch.int32)
    pbr = PbrVoxels(coords, torch.rand(3, 6), r)
    core = core_voxel_tensors([pbr, pbr])
    assert core.data.shape == (6, 4) and core.data[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert core.data[1].tolist() == [0, 3, 7, r - 1 - 5]  # (b, x, z, R-1-y)
    centre = lambda c: -0.5 + (c.float() + 0.5) / r  # noqa: E731
    torch.testing.assert_close(centre(core.data[:3, 1:]), z_up_to_y_up(centre(coords)), atol=1e-7, rtol=0)
    back = pbr_from_core_voxel(core.data, core.voxel_colors, core.resolution, 2)
    for item in back:
        assert torch.equal(item.coords, coords) and torch.equal(item.attrs, pbr.attrs)
    with pytest.raises(InputError, match="6 PBR channels"):
        pbr_from_core_voxel(core.data, core.voxel_colors[:, :3], r, 2)
    with pytest.raises(InputError, match="2 items but the mesh batch has 3"):
        pbr_from_core_voxel(core.data, core.voxel_colors, r, 3)
