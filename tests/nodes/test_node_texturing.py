"""Texturing nodes on the tiny texturing pipeline: Load Mesh → Encode Mesh → Sample Material → Bake onto Mesh keeps
the input's vertices, faces and UVs bit for bit, equals the library's texturing run, and refuses bad inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import trimesh

from nodes import NODE_CLASS_MAPPINGS as M
from nodes import comfy_bridge as bridge
from nodes.texturing import EncodedShapeAsset, SourceMeshAsset
from nodes.types import MaterialAsset, ShapeAsset
from tests.nodes.conftest import comfy_load_image
from tests.tools.meshes import uv_mesh
from trellis2_core import cancel
from trellis2_core.errors import CancelledError, InputError, WeightsError
from trellis2_core.texturing.glb_exact import read_accessor

RES, TEX = 64, 256
TEX_SAMPLER = dict(steps=2, guidance_strength=1.0, guidance_rescale=0.0, guidance_interval_start=0.6,
                   guidance_interval_end=0.9, rescale_t=3.0)


@pytest.fixture(scope="module")
def tex_handle(golden_dir):
    folder = golden_dir / "texturing" / "tiny-pipeline"
    if not (folder / "texturing_pipeline.json").is_file():
        pytest.skip(f"texturing golden pipeline not found at {folder}")
    (h,) = M["Trellis2LoadModel"]().load("microsoft/TRELLIS.2-4B", "float32", "auto", "high", "cpu",
                                         custom_source=str(folder))
    return h


@pytest.fixture(scope="module")
def tex_cond(tex_handle, rgba_asset):
    image, mask = comfy_load_image(rgba_asset)
    asset, _ = M["Trellis2EncodeImage"]().encode(tex_handle, image, "512 only", True, mask=mask)
    return asset


def _input_folder(root):
    folder = root / "input"
    (folder / "3d").mkdir(parents=True)
    uv_mesh().export(folder / "3d" / "ellipsoid.glb")
    return folder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """ComfyUI's input (with a UV-mapped GLB in input/3d) and output folders, for the whole module."""
    root = tmp_path_factory.mktemp("texnodes")
    (root / "output").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRELLIS2_INPUT_DIR", str(_input_folder(root)))
        mp.setenv("TRELLIS2_OUTPUT_DIR", str(root / "output"))
        yield root / "input", root / "output"


@pytest.fixture()
def input_dir(dirs):
    return dirs[0]


@pytest.fixture()
def output_dir(dirs):
    return dirs[1]


@pytest.fixture(scope="module")
def chain(tex_handle, tex_cond, dirs):
    """Load Mesh → Encode Mesh → Sample Material (stage_seed 0) → Bake onto Mesh."""
    assert "3d/ellipsoid.glb" in M["Trellis2LoadMesh"].INPUT_TYPES()["required"]["mesh_file"][0]
    (mesh,) = M["Trellis2LoadMesh"]().load("3d/ellipsoid.glb")
    (shape,) = M["Trellis2EncodeMesh"]().encode(tex_handle, mesh, RES, 42)
    (material,) = M["Trellis2SampleMaterial"]().sample(tex_handle, tex_cond, shape, 0, **TEX_SAMPLER)
    out = M["Trellis2BakeOntoMesh"]().bake(tex_handle, material, mesh, "tex/out", TEX, "auto", "png", True)
    return mesh, shape, material, out


def test_chain_keeps_vertices_faces_and_uvs_bit_identical(chain, input_dir, output_dir):
    mesh, shape, _, out = chain
    (path,) = out["result"]
    (entry,) = out["ui"]["trellis2_glb"]
    assert path == "tex/out_00001_.glb" and (entry["subfolder"], entry["filename"]) == ("tex", "out_00001_.glb")
    src, dst = input_dir / "3d" / "ellipsoid.glb", output_dir / path
    a = trimesh.load(src, process=False, force="mesh")
    b = trimesh.load(dst, process=False, force="mesh")
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert np.array_equal(a.visual.uv, b.visual.uv)
    n = len(a.vertices)
    assert np.array_equal(read_accessor(src.read_bytes(), "TEXCOORD_0", n, 2),
                          read_accessor(dst.read_bytes(), "TEXCOORD_0", n, 2))
    assert b.visual.material.baseColorTexture.size == (TEX, TEX)
    assert entry["faces"] == len(a.faces) and entry["vertices"] == n
    assert isinstance(shape, EncodedShapeAsset) and shape.shape.res == RES


def test_chain_equals_the_library_texturing_run(chain, tex_handle, tex_cond):
    """stage_seed 0 continues Encode Mesh's seed: the material latent is the official texturing run's."""
    from trellis2_core.texturing.stages import texturing_pipeline_for

    _, shape, material, _ = chain
    pipe = texturing_pipeline_for(tex_handle.pipeline)
    ref = pipe.run_from_conditioning(shape.encoded.prepared, tex_cond.cond.at(512), seed=42, resolution=RES,
                                     sampler={"steps": TEX_SAMPLER["steps"]})
    assert torch.equal(ref.material.slat.coords, material.material.slat.coords)
    torch.testing.assert_close(ref.material.slat.feats, material.material.slat.feats, atol=0, rtol=0)


def test_bake_refuses_generated_shapes_and_other_meshes(chain, tex_handle):
    mesh, shape, material, _ = chain
    plain = ShapeAsset(shape=shape.shape, pipeline_type=shape.pipeline_type, rng_state=shape.rng_state)
    bake = M["Trellis2BakeOntoMesh"]()
    with pytest.raises(InputError, match="Encode Mesh"):
        bake.bake(tex_handle, MaterialAsset(material=material.material, shape=plain), mesh, "x", TEX, "auto", "png",
                  True)
    other = SourceMeshAsset(mesh=mesh.mesh.__class__(vertices=mesh.mesh.vertices * 2, faces=mesh.mesh.faces,
                                                     uvs=mesh.mesh.uvs), origin="other")
    with pytest.raises(InputError, match="not the mesh Encode Mesh encoded"):
        bake.bake(tex_handle, material, other, "x", TEX, "auto", "png", True)
    with pytest.raises(InputError, match="unwrap"):
        bake.bake(tex_handle, material, mesh, "x", TEX, "sometimes", "png", True)


@pytest.mark.parametrize("name, match", [
    ("none", "choose a mesh file"), ("../escape.glb", "outside"), ("/etc/x.glb", "outside"),
    ("3d/missing.glb", "no file"), ("3d/notes.txt", "not one of"),
])
def test_load_mesh_refuses_bad_names(input_dir, name, match):
    with pytest.raises(InputError, match=match):
        M["Trellis2LoadMesh"]().load(name)


def test_load_mesh_lists_only_meshes_and_notices_file_changes(tmp_path, monkeypatch):
    input_dir = _input_folder(tmp_path)
    monkeypatch.setenv("TRELLIS2_INPUT_DIR", str(input_dir))
    (input_dir / "photo.png").write_bytes(b"x")
    trimesh.creation.box().export(input_dir / "box.obj")
    files = M["Trellis2LoadMesh"].INPUT_TYPES()["required"]["mesh_file"][0]
    assert files == ["none", "3d/ellipsoid.glb", "box.obj"]
    before = M["Trellis2LoadMesh"].IS_CHANGED("box.obj")
    trimesh.creation.box(extents=(1, 2, 3)).export(input_dir / "box.obj")
    os.utime(input_dir / "box.obj", ns=(1, 1))
    assert M["Trellis2LoadMesh"].IS_CHANGED("box.obj") != before


def test_load_mesh_takes_a_core_mesh(input_dir):
    m = uv_mesh()
    texcoords = np.stack((m.visual.uv[:, 0], 1 - m.visual.uv[:, 1]), 1).astype(np.float32)  # glTF convention
    core = bridge.core_mesh(torch.from_numpy(m.vertices.astype(np.float32))[None], torch.from_numpy(m.faces)[None])
    core = type("CoreMesh", (), {"vertices": core.vertices, "faces": core.faces,
                                 "uvs": torch.from_numpy(texcoords)[None]})()
    (asset,) = M["Trellis2LoadMesh"]().load("none", core_mesh=core)
    assert asset.origin == "core MESH" and np.array_equal(asset.mesh.faces, m.faces)
    assert np.allclose(asset.mesh.uvs, m.visual.uv, atol=1e-7)
    batch = bridge.core_mesh(torch.zeros(2, 3, 3), torch.zeros(2, 1, 3, dtype=torch.int64))
    with pytest.raises(InputError, match="batch of 2"):
        M["Trellis2LoadMesh"]().load("none", core_mesh=batch)


def test_encode_needs_a_texturing_config(handle, input_dir):
    (mesh,) = M["Trellis2LoadMesh"]().load("3d/ellipsoid.glb")
    with pytest.raises(WeightsError, match="texturing_pipeline.json"):
        M["Trellis2EncodeMesh"]().encode(handle, mesh, RES, 42)


def test_cancel_stops_encode_and_bake_without_a_file(chain, tex_handle, output_dir, monkeypatch):
    mesh, _, material, _ = chain
    monkeypatch.setattr(cancel, "DEFAULT_INTERVAL", 0.0)
    monkeypatch.setattr(bridge, "interrupted", lambda: True)
    with pytest.raises(CancelledError):
        M["Trellis2EncodeMesh"]().encode(tex_handle, mesh, RES, 7)
    before = set(output_dir.rglob("*"))
    with pytest.raises(CancelledError):
        M["Trellis2BakeOntoMesh"]().bake(tex_handle, material, mesh, "tex/cancelled", TEX, "auto", "png", True)
    assert {p for p in set(output_dir.rglob("*")) - before if p.is_file()} == set()
