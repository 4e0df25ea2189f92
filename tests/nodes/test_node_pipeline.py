"""The stage nodes on the tiny golden pipeline: official equivalence, no in-place mutation, interrupts, export."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as M
from nodes import comfy_bridge as bridge
from trellis2_core.errors import CancelledError, InputError, WeightsError
from trellis2_core.pipeline.pipeline import SamplerOverrides

from tests.nodes.conftest import comfy_load_image

STEPS = 1


def _sampler(stage, steps=STEPS):
    d = {"ss": (7.5, 0.7, 0.6, 1.0, 5.0), "shape": (7.5, 0.5, 0.6, 1.0, 3.0), "tex": (1.0, 0.0, 0.6, 0.9, 3.0)}[stage]
    return dict(steps=steps, guidance_strength=d[0], guidance_rescale=d[1], guidance_interval_start=d[2],
                guidance_interval_end=d[3], rescale_t=d[4])


@pytest.fixture(scope="module")
def cond(handle, rgba_asset):
    image, mask = comfy_load_image(rgba_asset)
    img, obj = M["Trellis2RemoveBackground"]().remove(image, "auto", 1024, False, "unused", mask=mask)
    asset, preview = M["Trellis2EncodeImage"]().encode(handle, img, "512 and 1024", True, mask=obj)
    assert preview.dim() == 4 and preview.shape[-1] == 3
    return asset


@pytest.fixture(scope="module")
def staged(handle, cond):
    (structure,) = M["Trellis2SampleStructure"]().sample(handle, cond, 7, **_sampler("ss"))
    (shape,) = M["Trellis2SampleShape"]().sample(handle, cond, structure, "512", 49152, 0, **_sampler("shape"))
    (material,) = M["Trellis2SampleMaterial"]().sample(handle, cond, shape, 0, **_sampler("tex"))
    items, core, voxel = M["Trellis2DecodeMesh"]().decode(handle, shape, material)
    return structure, shape, material, items, (core, voxel)


def _snapshot(*objs):
    """Clones of every tensor reachable through the (frozen dataclass) assets."""
    out = []

    def walk(o, depth=0):
        if depth > 6:
            return
        if isinstance(o, torch.Tensor):
            out.append(o.detach().clone())
        elif hasattr(o, "__dataclass_fields__"):
            for name in o.__dataclass_fields__:
                walk(getattr(o, name), depth + 1)
        elif hasattr(o, "feats") and hasattr(o, "coords"):
            out.extend([o.feats.detach().clone(), o.coords.detach().clone()])
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x, depth + 1)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x, depth + 1)
    for o in objs:
        walk(o)
    return out


def test_staged_nodes_reproduce_the_official_single_seed_run(handle, cond, staged):
    _, _, _, items, (core, voxel) = staged
    so = SamplerOverrides({"steps": STEPS}, {"steps": STEPS}, {"steps": STEPS})
    ref = handle.pipeline.run_from_conditioning(cond.cond, seed=7, pipeline_type="512", samplers=so,
                                                fast=handle.fast)  # the nodes run the pipeline's speed setting
    assert torch.equal(ref.decoded.meshes[0].faces, items[0].mesh.faces)
    assert torch.equal(ref.decoded.meshes[0].vertices, items[0].mesh.vertices)
    assert torch.equal(ref.decoded.pbr[0].attrs, items[0].pbr.attrs)
    # core MESH: holes filled, no unreferenced vertices (the mesher keeps one vertex per voxel), normals, counts
    from trellis2_core.postprocess import fill_holes, remove_unreferenced_vertices

    filled, _ = remove_unreferenced_vertices(fill_holes(items[0].mesh))
    assert core.vertex_counts.tolist() == [filled.num_vertices] and core.face_counts.tolist() == [filled.num_faces]
    assert core.vertices.shape == (1, filled.num_vertices, 3) and core.normals.shape == (1, filled.num_vertices, 3)
    assert filled.num_vertices < items[0].mesh.num_vertices
    used = torch.zeros(filled.num_vertices, dtype=torch.bool)
    used[core.faces[0].reshape(-1)] = True
    assert bool(used.all())
    assert voxel.voxel_colors.shape == items[0].pbr.attrs.shape and voxel.resolution == items[0].pbr.resolution


def test_stage_seed_reseeds_only_that_stage(handle, cond, staged):
    structure, shape, _, _, _ = staged
    (other,) = M["Trellis2SampleShape"]().sample(handle, cond, structure, "512", 49152, 5, **_sampler("shape"))
    assert torch.equal(other.shape.slat.coords, shape.shape.slat.coords)
    assert not torch.equal(other.shape.slat.feats, shape.shape.slat.feats)


def test_downstream_nodes_never_mutate_their_inputs(handle, cond, staged):
    structure, shape, material, items, _ = staged
    before = _snapshot(cond, structure, shape, material, items)
    (again,) = M["Trellis2SampleMaterial"]().sample(handle, cond, shape, 0, **_sampler("tex"))
    items2, _, _ = M["Trellis2DecodeMesh"]().decode(handle, shape, again)
    (filled,) = M["Trellis2FillHoles"]().fill(items2, 0.03)
    (small,) = M["Trellis2DecimateMesh"]().decimate(filled, 500, 1e-5)
    after = _snapshot(cond, structure, shape, material, items)
    assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    assert torch.equal(again.material.slat.feats, material.material.slat.feats)  # re-run = same result
    assert small[0].mesh.num_faces <= max(500, 1) * 1.1 and filled[0].pbr is items2[0].pbr


def test_interrupt_stops_within_one_sampler_step(handle, cond, monkeypatch):
    flag = {"on": False}
    calls = []
    monkeypatch.setattr(bridge, "interrupted", lambda: flag["on"])

    class Bar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            if value >= 2:
                flag["on"] = True  # the user presses Cancel during step 2

    monkeypatch.setattr(bridge, "progress_bar", Bar)
    flow = handle.pipeline.models("sparse_structure_flow_model")
    hook = flow.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(CancelledError):
            M["Trellis2SampleStructure"]().sample(handle, cond, 7, **_sampler("ss", steps=6))
    finally:
        hook.remove()
    per_step = 1 if handle.fast is not None and handle.fast.batch_cfg else 2  # CFG pair batched or in two calls
    assert len(calls) == 2 * per_step  # two steps of CFG (cond + uncond) ran, the third never started


def _glb_json(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunk_len, chunk_type = struct.unpack("<I4s", data[12:20])
    assert chunk_type == b"JSON"
    import json
    return json.loads(data[20:20 + chunk_len])


def test_export_stays_in_output_and_cancel_leaves_no_file(staged, output_dir, monkeypatch):
    _, _, _, items, _ = staged
    out = M["Trellis2ExportGLB"]().export(items, "../../evil/mesh", 256, 2000, "OPAQUE", True, "png")
    entry = out["ui"]["trellis2_glb"][0]
    path = output_dir / entry["subfolder"] / entry["filename"]
    assert out["result"][0] == "evil/mesh_00001_.glb" and path.is_file()
    core, model_3d = out["result"][1:]
    assert core.texture.shape == (1, 256, 256, 3) and core.uvs.shape[1] == core.vertices.shape[1]
    assert model_3d.get_source() == str(path)
    gltf = _glb_json(path)
    assert gltf["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] is not None
    assert entry["faces"] > 0 and entry["vertices"] > 0

    polls = {"n": 0}

    def cancel_late():  # Cancel arrives during the export (after two of its steps)
        polls["n"] += 1
        return polls["n"] > 2

    monkeypatch.setattr(bridge, "interrupted", cancel_late)
    with pytest.raises(CancelledError):
        M["Trellis2ExportGLB"]().export(items, "../../evil/mesh", 256, 2000, "OPAQUE", True, "png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mesh_00001_.glb"]  # no half-written GLB or .part


def test_geometry_nodes_refuse_an_unwrapped_mesh(staged):
    """Changing the geometry after UV Unwrap would break the atlas (the staged workflow exports through one)."""
    import dataclasses

    _, _, _, items, _ = staged
    unwrapped = (dataclasses.replace(items[0], atlas=object()),)
    with pytest.raises(ValueError, match="before UV Unwrap"):
        M["Trellis2DecimateMesh"]().decimate(unwrapped, 100, 0.0)
    with pytest.raises(ValueError, match="before UV Unwrap"):
        M["Trellis2FillHoles"]().fill(unwrapped, 0.03)


def test_missing_model_folder_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TRELLIS2_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        M["Trellis2LoadModel"]().load("microsoft/TRELLIS.2-4B", "auto", "auto", "auto", "cpu",
                                      custom_source=str(tmp_path / "nowhere"))
    text = str(err.value)
    assert "Looked in" in text and str(tmp_path / "nowhere") in text
    assert str(tmp_path / "models" / "trellis2") in text


def test_remove_background_modes(rgba_asset, tmp_path, monkeypatch):
    node = M["Trellis2RemoveBackground"]()
    image, mask = comfy_load_image(rgba_asset)
    alpha = torch.from_numpy(np.asarray(rgba_asset.getchannel("A"), dtype=np.float32) / 255)
    _, obj = node.remove(image, "keep alpha", 1024, False, "unused", mask=mask)
    assert torch.allclose(obj[0], alpha, atol=1 / 255)
    _, obj2 = node.remove(image, "use mask", 1024, False, "unused", mask=alpha[None])
    assert torch.allclose(obj2, obj, atol=1 / 255)
    small, obj3 = node.remove(image, "auto", 100, False, "unused", mask=mask)
    assert small.shape[1:3] == (100, 100) and obj3.shape == (1, 100, 100)
    with pytest.raises(InputError, match="no transparency"):
        node.remove(image, "keep alpha", 1024, False, "unused", mask=torch.zeros(1, 64, 64))
    with pytest.raises(InputError, match="needs the mask"):
        node.remove(image, "use mask", 1024, False, "unused")

    from tests.workflows.tiny_matting import make_tiny_matting
    make_tiny_matting(tmp_path / "models" / "rembg" / "BiRefNet")
    monkeypatch.setenv("TRELLIS2_MODELS_DIR", str(tmp_path / "models"))
    _, obj4 = node.remove(image, "model", 1024, False, "ZhengPeng7/BiRefNet")
    assert obj4.shape == (1, 256, 256) and 0.1 < float((obj4 > 0.8).float().mean()) < 0.9


def test_encode_asks_for_background_removal(handle, rgba_asset):
    opaque = torch.rand(1, 32, 32, 3)
    with pytest.raises(InputError, match="Remove Background"):
        M["Trellis2EncodeImage"]().encode(handle, opaque, "512 only", True)


def test_shape_needs_1024_tokens_for_1024_types(handle, rgba_asset, staged):
    image, mask = comfy_load_image(rgba_asset)
    img, obj = M["Trellis2RemoveBackground"]().remove(image, "auto", 1024, False, "unused", mask=mask)
    small_cond, _ = M["Trellis2EncodeImage"]().encode(handle, img, "512 only", True, mask=obj)
    with pytest.raises(InputError, match="512 and 1024"):
        M["Trellis2SampleShape"]().sample(handle, small_cond, staged[0], "1024_cascade", 49152, 0,
                                          **_sampler("shape"))


def test_decode_rejects_a_material_of_another_shape(handle, cond, staged):
    structure, shape, material, _, _ = staged
    (other_shape,) = M["Trellis2SampleShape"]().sample(handle, cond, structure, "1024", 49152, 0,
                                                        **_sampler("shape"))
    with pytest.raises(InputError, match="another shape"):
        M["Trellis2DecodeMesh"]().decode(handle, other_shape, material)


def test_preview_node_refuses_paths_outside_output(output_dir):
    node = M["Trellis2PreviewGLB"]()
    (output_dir / "a.glb").write_bytes(b"glTF")
    assert node.preview("a.glb")["ui"]["trellis2_glb"] == [{"filename": "a.glb", "subfolder": "", "type": "output"}]
    for bad in ("../a.glb", "/etc/passwd", "", "missing.glb"):
        with pytest.raises(InputError):
            node.preview(bad)
