"""texture_mesh(): the input mesh comes back with its vertices, faces, UVs and frame; bad meshes; cancel; CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image, ImageDraw

from trellis2_core.errors import CancelledError, InputError
from trellis2_core.postprocess.bake import rasterize_positions
from trellis2_core.texturing.api import texture_mesh
from trellis2_core.texturing.glb_exact import read_accessor
from trellis2_core.texturing.pipeline import TexturingPipeline

RES, TEX = 64, 64


@pytest.fixture(scope="module")
def pipe(golden_dir):
    folder = golden_dir / "texturing" / "tiny-pipeline"
    if not (folder / "texturing_pipeline.json").is_file():
        pytest.skip(f"texturing golden pipeline not found at {folder}")
    return TexturingPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def image():
    img = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((20, 20, 108, 108), fill=(200, 40, 30, 255))
    return img


def _uv_mesh() -> trimesh.Trimesh:
    """An ellipsoid far from the origin (frame check) with planar UVs."""
    m = trimesh.creation.icosphere(subdivisions=2)
    v = (m.vertices * [1.0, 2.0, 0.5] + [3.0, 10.0, -2.0]).astype(np.float32)
    uv = np.stack(((v[:, 0] - v[:, 0].min()) / np.ptp(v[:, 0]), (v[:, 1] - v[:, 1].min()) / np.ptp(v[:, 1])), 1)
    return trimesh.Trimesh(v, m.faces, process=False, visual=trimesh.visual.TextureVisuals(uv=uv.astype(np.float32)))


@pytest.fixture(scope="module")
def textured(pipe, image, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tex")
    _uv_mesh().export(folder / "in.glb")
    res = texture_mesh(folder / "in.glb", image, folder / "out.glb", pipeline=pipe, resolution=RES, texture_size=TEX)
    return folder, res


def test_vertices_faces_uvs_bit_identical(textured):
    folder, res = textured
    assert res.kept_uvs
    a = trimesh.load(folder / "in.glb", process=False, force="mesh")
    b = trimesh.load(folder / "out.glb", process=False, force="mesh")
    assert np.array_equal(a.vertices, b.vertices)  # same frame: not normalised, not axis-swapped
    assert np.array_equal(a.faces, b.faces)
    assert np.array_equal(a.visual.uv, b.visual.uv)
    n = len(a.vertices)
    raw_in = read_accessor((folder / "in.glb").read_bytes(), "TEXCOORD_0", n, 2)
    raw_out = read_accessor((folder / "out.glb").read_bytes(), "TEXCOORD_0", n, 2)
    assert np.array_equal(raw_in, raw_out)
    assert b.visual.material.baseColorTexture is not None


def test_textured_glb_passes_the_khronos_validator(textured, pipe, image, tmp_path):
    """0 validator errors for a kept-UV result and for an unwrapped one (split seams), textures of TEX²."""
    from tests.tools.glb_checks import assert_valid_glb

    folder, _ = textured
    assert_valid_glb(folder / "out.glb", TEX)
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    texture_mesh((box.vertices, box.faces), image, tmp_path / "box.glb", pipeline=pipe, resolution=RES,
                 texture_size=TEX)
    assert_valid_glb(tmp_path / "box.glb", TEX)


def test_every_covered_texel_is_baked_from_voxels(textured):
    """Each texel a triangle covers maps to a surface point with a PBR voxel among its trilinear neighbours."""
    folder, res = textured
    m = _uv_mesh()
    pbr = res.texturing.pbr
    uv = torch.from_numpy(np.stack((m.visual.uv[:, 0], 1 - m.visual.uv[:, 1]), 1)).float()
    work = res.texturing.mesh.vertices.float()
    covered, points = rasterize_positions(uv, torch.from_numpy(m.faces), work, TEX)
    assert int(covered.sum()) > 0.3 * TEX * TEX
    q = (points + 0.5) * pbr.resolution
    base = torch.floor(q - 0.5).long()
    keys = {tuple(c) for c in pbr.coords.tolist()}
    offsets = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    missing = sum(not any((x + i, y + j, z + k) in keys for i, j, k in offsets) for x, y, z in base.tolist())
    assert missing == 0


def test_mesh_without_uvs_is_unwrapped_keeping_positions(pipe, image, tmp_path):
    m = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    m.vertices = m.vertices + [5.0, 0.0, 1.0]
    res = texture_mesh((m.vertices.astype(np.float32), m.faces), image, tmp_path / "box.glb", pipeline=pipe,
                       resolution=RES, texture_size=TEX)
    assert not res.kept_uvs
    out = trimesh.load(tmp_path / "box.glb", process=False, force="mesh")
    src = {tuple(v) for v in m.vertices.astype(np.float32).tolist()}
    assert all(tuple(v) in src for v in out.vertices.astype(np.float32).tolist())  # seam copies, same positions
    assert len(out.faces) == len(m.faces)
    with pytest.raises(InputError, match="unwrap='never'"):
        texture_mesh((m.vertices, m.faces), image, tmp_path / "n.glb", pipeline=pipe, resolution=RES,
                     texture_size=TEX, unwrap="never")


def test_holes_nonmanifold_degenerate_meshes_texture(pipe, image, tmp_path):
    m = trimesh.creation.icosphere(subdivisions=1)
    faces = m.faces[10:]  # holes
    fin = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4], [5, 5, 6], [7, 8, 7]])  # non-manifold fin + degenerate faces
    res = texture_mesh((m.vertices, np.concatenate((faces, fin))), image, tmp_path / "bad.glb", pipeline=pipe,
                       resolution=RES, texture_size=TEX)
    assert res.path.is_file() and res.coverage > 0


@pytest.mark.parametrize("mesh, match", [
    ((np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64)), "no triangles"),
    ((np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]])), "NaN"),
    ((np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 5]])), "index vertices"),
    ((np.ones((3, 3)), np.array([[0, 1, 2]])), "zero extent"),
])
def test_bad_meshes_raise_actionable_errors(pipe, image, tmp_path, mesh, match):
    with pytest.raises(InputError, match=match):
        texture_mesh(mesh, image, tmp_path / "x.glb", pipeline=pipe, resolution=RES, texture_size=TEX)
    assert not (tmp_path / "x.glb").exists()


def test_multi_object_scene_is_refused(pipe, image, tmp_path):
    scene = trimesh.Scene([trimesh.creation.box(), trimesh.creation.icosphere().apply_translation([3, 0, 0])])
    scene.export(tmp_path / "two.glb")
    with pytest.raises(InputError, match="one texture set onto one mesh"):
        texture_mesh(tmp_path / "two.glb", image, tmp_path / "x.glb", pipeline=pipe, resolution=RES,
                     texture_size=TEX)


def test_cancel_writes_nothing(pipe, image, tmp_path):
    with pytest.raises(CancelledError):
        texture_mesh(_uv_mesh(), image, tmp_path / "c.glb", pipeline=pipe, resolution=RES, texture_size=TEX,
                     should_cancel=lambda: True)
    assert not (tmp_path / "c.glb").exists()


def test_cli_texture_subcommand_errors(tmp_path, capsys):
    from trellis2_core.__main__ import main

    assert main(["texture", str(tmp_path / "missing.glb"), str(tmp_path / "i.png"), "-o", str(tmp_path / "o.glb"),
                 "--pipeline", "demo"]) == 2
    assert "error:" in capsys.readouterr().err


def test_dtype_and_vram_preset_reach_the_pipeline(image, tmp_path, monkeypatch):
    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(kwargs, source=source)
        raise InputError("stop here")
    monkeypatch.setattr(TexturingPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    with pytest.raises(InputError, match="stop here"):
        texture_mesh(_uv_mesh(), image, tmp_path / "d.glb", pipeline="somewhere", dtype="bfloat16", vram_preset="low",
                     resolution=RES, texture_size=TEX)
    assert (seen["source"], seen["dtype_override"], seen["vram_preset"]) == ("somewhere", "bfloat16", "low")
    with pytest.raises(InputError, match="vram_preset"):
        texture_mesh(_uv_mesh(), image, tmp_path / "d.glb", pipeline="somewhere", vram_preset="huge")
