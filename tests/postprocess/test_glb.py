"""GLB packing (§9.6): PBR material and textures, Y-up axes, UV convention, alpha modes, PNG/WebP, atomic write,
clear path errors, and (when installed) the Khronos glTF validator."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from trellis2_core.errors import InputError
from trellis2_core.postprocess import bake_pbr_textures, sample_pbr_voxels, unwrap_uv, vertex_normals, write_glb
from trellis2_core.postprocess.bake import to_uint8

trimesh = pytest.importorskip("trimesh")
SIZE = 256


@pytest.fixture(scope="module")
def baked(oriented_blob):
    mesh, voxels = oriented_blob
    atlas = unwrap_uv(mesh, SIZE)
    tex = bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, voxels, SIZE)
    normals = vertex_normals(mesh)[atlas.vmap]
    return atlas, tex, normals, voxels


def _write(path, baked, **kw):
    atlas, tex, normals, _ = baked
    return write_glb(path, atlas.vertices, atlas.faces, normals, atlas.uvs, tex.base_color, tex.metallic_roughness,
                     **kw)


def _parse_glb(path: Path):
    """Minimal GLB reader: (json dict, binary chunk bytes)."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A
    doc = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<II", data, 20 + jlen)
    assert btype == 0x004E4942
    return doc, data[28 + jlen:28 + jlen + blen]


def _accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)


def _image(doc, binary, texture_index):
    from PIL import Image

    tex = doc["textures"][texture_index]
    source = tex["source"] if "source" in tex else tex["extensions"]["EXT_texture_webp"]["source"]
    img = doc["images"][source]
    view = doc["bufferViews"][img["bufferView"]]
    start = view.get("byteOffset", 0)
    return img["mimeType"], np.asarray(Image.open(io.BytesIO(binary[start:start + view["byteLength"]])))


def test_material_textures_and_axes_reload_with_trimesh(tmp_path, baked):
    atlas, tex, normals, _ = baked
    path = tmp_path / "model.glb"
    size = _write(path, baked)
    assert path.stat().st_size == size
    scene = trimesh.load(path)
    (mesh,) = scene.geometry.values()
    assert mesh.vertices.shape[0] == atlas.vertices.shape[0] and mesh.faces.shape[0] == atlas.faces.shape[0]
    x, y, z = atlas.vertices.double().unbind(1)
    np.testing.assert_allclose(mesh.vertices, torch.stack((x, z, -y), 1).numpy(), atol=1e-6)  # Z-up → Y-up
    mat = mesh.visual.material
    assert mat.baseColorTexture.size == (SIZE, SIZE) and mat.baseColorTexture.mode == "RGBA"
    assert mat.metallicRoughnessTexture.size == (SIZE, SIZE)
    assert mesh.visual.uv.shape == (atlas.uvs.shape[0], 2)


def test_json_layout_uvs_unflipped_and_textures_land_where_the_voxels_say(tmp_path, baked):
    atlas, tex, normals, voxels = baked
    path = tmp_path / "model.glb"
    _write(path, baked)
    doc, binary = _parse_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    attrs = prim["attributes"]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(attrs)
    uv = _accessor(doc, binary, attrs["TEXCOORD_0"])
    np.testing.assert_allclose(uv, atlas.uvs.numpy(), atol=1e-6)  # glTF TEXCOORD_0 = raster (u, v), unflipped
    normal = _accessor(doc, binary, attrs["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
    mat = doc["materials"][0]
    pbr = mat["pbrMetallicRoughness"]
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0]
    assert pbr.get("metallicFactor", 1.0) == 1.0 and pbr.get("roughnessFactor", 1.0) == 1.0
    assert mat.get("alphaMode", "OPAQUE") == "OPAQUE" and mat["doubleSided"] is False
    mime, base = _image(doc, binary, pbr["baseColorTexture"]["index"])
    _, mr = _image(doc, binary, pbr["metallicRoughnessTexture"]["index"])
    assert mime == "image/png" and base.shape == (SIZE, SIZE, 4) and mr.shape == (SIZE, SIZE, 3)
    assert int(mr[..., 0].max()) == 0  # R unused
    # A viewer samples image row v·H, column u·W (top-left origin). Those texels must hold the voxel attributes at
    # the corresponding surface points: check at triangle centroids (inside their own chart, away from seams).
    faces = atlas.faces.long()
    centre_uv = atlas.uvs[faces].mean(1)
    centre_xyz = atlas.vertices[faces].mean(1)
    expected = to_uint8(sample_pbr_voxels(voxels, centre_xyz)).numpy().astype(int)
    row = np.clip((centre_uv[:, 1].numpy() * SIZE).astype(int), 0, SIZE - 1)
    col = np.clip((centre_uv[:, 0].numpy() * SIZE).astype(int), 0, SIZE - 1)
    err_rgb = np.abs(base[row, col, :3].astype(int) - expected[:, :3])
    err_rough = np.abs(mr[row, col, 1].astype(int) - expected[:, 4])
    assert np.median(err_rgb) <= 3 and np.percentile(err_rgb, 95) <= 20, np.percentile(err_rgb, [50, 95])
    assert np.median(err_rough) <= 3
    # the vertically mirrored lookup (a wrong V convention) must be clearly worse
    wrong = np.abs(base[SIZE - 1 - row, col, :3].astype(int) - expected[:, :3])
    assert np.median(wrong) > 5 * max(np.median(err_rgb), 1)


@pytest.mark.parametrize("mode", ["OPAQUE", "MASK", "BLEND"])
def test_alpha_modes_and_double_sided(tmp_path, baked, mode):
    path = tmp_path / f"{mode}.glb"
    _write(path, baked, alpha_mode=mode, alpha_cutoff=0.25, double_sided=True)
    mat = _parse_glb(path)[0]["materials"][0]
    assert mat.get("alphaMode", "OPAQUE") == mode and mat["doubleSided"] is True
    if mode == "MASK":
        assert mat["alphaCutoff"] == 0.25
    else:
        assert "alphaCutoff" not in mat


def test_webp_textures_use_the_extension(tmp_path, baked):
    path = tmp_path / "webp.glb"
    _write(path, baked, texture_format="webp")
    doc, binary = _parse_glb(path)
    assert "EXT_texture_webp" in doc["extensionsUsed"] and "EXT_texture_webp" in doc["extensionsRequired"]
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    mime, base = _image(doc, binary, pbr["baseColorTexture"]["index"])
    assert mime == "image/webp" and base.shape[:2] == (SIZE, SIZE)  # libwebp drops an all-opaque alpha plane


def test_bad_options_are_rejected(tmp_path, baked):
    with pytest.raises(InputError, match="alpha_mode"):
        _write(tmp_path / "a.glb", baked, alpha_mode="CUTOUT")
    with pytest.raises(InputError, match="texture_format"):
        _write(tmp_path / "a.glb", baked, texture_format="jpeg")


def test_directory_and_unwritable_paths_fail_clearly(tmp_path, baked):
    with pytest.raises(InputError, match="is a directory"):
        _write(tmp_path, baked)
    size = _write(tmp_path / "missing" / "deeper" / "a.glb", baked)  # missing folders are created (-o out/x.glb)
    assert (tmp_path / "missing" / "deeper" / "a.glb").stat().st_size == size
    with pytest.raises(InputError, match="cannot write"):
        _write("/proc/trellis2_test.glb", baked)  # refused even to root
    if os.geteuid() != 0:  # root may write into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                _write(locked / "a.glb", baked)
        finally:
            locked.chmod(0o700)


def test_interrupted_write_leaves_no_partial_file(tmp_path, baked, monkeypatch):
    import trellis2_core.postprocess.glb as glb_module

    target = tmp_path / "model.glb"
    target.write_bytes(b"previous export")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption before the rename")

    monkeypatch.setattr(glb_module.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        _write(target, baked)
    assert target.read_bytes() == b"previous export"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.glb"]  # and no temporary is left behind


def _validator() -> tuple[str, str] | None:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        return None
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60).stdout.strip()
    probe = subprocess.run([node, "-e", "require.resolve('gltf-validator')"], capture_output=True,
                           env={**os.environ, "NODE_PATH": root}, timeout=60)
    return (node, root) if probe.returncode == 0 else None


_VALIDATE_JS = """
const fs = require('fs');
const validator = require('gltf-validator');
const data = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(data).then((r) => { console.log(JSON.stringify(r.issues)); })
  .catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_khronos_validator_reports_no_errors(tmp_path, baked, fmt):
    found = _validator()
    if found is None:
        pytest.skip("node and the npm package gltf-validator are not installed (npm install -g gltf-validator)")
    node, root = found
    path = tmp_path / f"model_{fmt}.glb"
    _write(path, baked, texture_format=fmt)
    script = tmp_path / "validate.js"
    script.write_text(_VALIDATE_JS)
    run = subprocess.run([node, str(script), str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NODE_PATH": root})
    assert run.returncode == 0, run.stderr
    issues = json.loads(run.stdout)
    errors = [m for m in issues["messages"] if m["severity"] == 0]
    assert issues["numErrors"] == 0, errors
