"""Real ComfyUI 0.33.0: our nodes next to core's native TRELLIS.2 and mesh nodes, linked both ways through ``/prompt``.

* ours → core: Decode Mesh's ``core_mesh`` (hole-filled, compacted) through core's Fill Holes / Decimate / Unwrap,
  baked by core's Bake Texture From Voxel from our ``voxel`` output, applied and saved by core's Save GLB;
* core → ours: a core ``MESH`` through our Fill Holes / Decimate / UV Unwrap / Export GLB (voxels from the
  ``voxel`` input); Export GLB's textured ``core_mesh`` and ``FILE_3D_GLB`` into core's Save GLB; core's
  in-memory ``MeshToFile3D`` and an ``input/``-relative path into our Preview GLB;
* ComfyUI core's own weight files (core layout, tiny golden weights) listed and run by our Load node;
* none of our node ids is one of core's (core keeps its own class when ids collide).

Runs only with ``$COMFYUI_DIR`` (see ``server.py``). Core's TRELLIS.2 *models* cannot run here (core builds them at
full size, 4B parameters, too large for a CPU test), so core's side of these graphs is its mesh and 3D nodes.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS
from tests.pipeline.test_pipeline_comfy_source import NAME as COMFY_SOURCE
from tests.pipeline.test_pipeline_comfy_source import golden_core_dir
from tests.tools.glb_checks import validate_glb

pytestmark = pytest.mark.comfyui
STEPS = 2


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the real-ComfyUI tests")
    from tests.comfyui.server import ComfyServer

    base = tmp_path_factory.mktemp("comfy_interop") / "base"
    golden_core_dir(base / "models")  # core's four TRELLIS.2 files, written from the tiny golden weights
    server = ComfyServer(Path(comfy_dir).resolve(), base)
    yield server
    server.stop()


def _defaults(node_id: str) -> dict:
    """Our node's widget defaults (sampler widgets etc.), as the frontend would send them."""
    spec = NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    out = {}
    for name, entry in spec["required"].items():
        opts = entry[1] if len(entry) > 1 else {}
        if "default" in opts:
            out[name] = opts["default"]
    return out


def _ours(node_id: str, **inputs) -> dict:
    values = _defaults(node_id)
    if "steps" in values:
        values["steps"] = STEPS
    values.update(inputs)
    return {"class_type": node_id, "inputs": values}


def _generation(source: str = "TRELLIS.2-4B", resolution: str = "512") -> dict:
    return {
        "load": _ours("Trellis2LoadModel", source=source, precision="float32", device="auto"),
        "image": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "enc": _ours("Trellis2EncodeImage", pipeline=["load", 0], image=["image", 0], mask=["image", 1],
                     resolutions="512 and 1024"),
        "ss": _ours("Trellis2SampleStructure", pipeline=["load", 0], conditioning=["enc", 0]),
        "shape": _ours("Trellis2SampleShape", pipeline=["load", 0], conditioning=["enc", 0], structure=["ss", 0],
                       resolution=resolution),
        "tex": _ours("Trellis2SampleMaterial", pipeline=["load", 0], conditioning=["enc", 0], shape=["shape", 0]),
        "dec": _ours("Trellis2DecodeMesh", pipeline=["load", 0], shape=["shape", 0], material=["tex", 0]),
    }


def _save(mesh_link: list, prefix: str) -> dict:
    return {"class_type": "SaveGLB", "inputs": {"mesh": mesh_link, "filename_prefix": prefix}}


def _run(comfy, prompt: dict) -> dict:
    entry = comfy.wait(comfy.queue(prompt))
    errors = [m for kind, m in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "success", f"{errors}\n{comfy.log()[-4000:]}"
    return entry


def _glb(comfy, prefix: str) -> tuple[Path, dict]:
    found = sorted((comfy.base / "output").glob(f"{prefix}*.glb"))
    assert len(found) == 1, f"expected one GLB {prefix}*, found {found}"
    data = found[0].read_bytes()
    assert data[:4] == b"glTF"
    size = struct.unpack("<I", data[12:16])[0]
    return found[0], json.loads(data[20:20 + size])


def _faces(gltf: dict) -> int:
    prim = gltf["meshes"][0]["primitives"][0]
    return gltf["accessors"][prim["indices"]]["count"] // 3


def _textured_and_valid(path: Path, gltf: dict, normals: bool = True) -> None:
    """Textures, UVs (and normals: our meshes carry them; core's unwrap drops them), no validator error."""
    material = gltf["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in material and "metallicRoughnessTexture" in material and gltf["images"]
    prim = gltf["meshes"][0]["primitives"][0]
    assert "TEXCOORD_0" in prim["attributes"] and ("NORMAL" in prim["attributes"] or not normals)
    report = validate_glb(path)
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    assert report["issues"]["numErrors"] == 0, f"glTF validator errors in {path.name}: {errors[:5]}"


def test_none_of_our_node_ids_is_one_of_cores(comfy):
    info = comfy.get("/object_info")
    assert "Trellis2Conditioning" in info and "BakeTextureFromVoxel" in info  # a core with native TRELLIS.2
    clashes = {k: info[k].get("python_module") for k in NODE_CLASS_MAPPINGS
               if not str(info.get(k, {}).get("python_module", "")).startswith("custom_nodes")}
    assert not clashes, f"node ids taken by ComfyUI core (core keeps its own class): {clashes}"


def test_ours_to_core_mesh_nodes_and_voxel_bake(comfy):
    prompt = _generation()
    prompt.update({
        "save_ours": _save(["dec", 1], "interop/ours_core_mesh"),
        "cfill": {"class_type": "FillHoles", "inputs": {"mesh": ["dec", 1], "max_perimeter": 0.03,
                                                        "weld_epsilon_rel": 1e-5, "max_vertices": 16,
                                                        "fill_chains": False}},
        "save_filled": _save(["cfill", 0], "interop/core_filled"),
        "cdec": {"class_type": "DecimateMesh", "inputs": {"mesh": ["cfill", 0], "target_face_count": 3000,
                                                          "placement_mode": "midpoint"}},
        "cuv": {"class_type": "UnwrapMesh", "inputs": {"mesh": ["cdec", 0], "segmenter": "pec", "resolution": 512,
                                                       "padding": 1, "weld_distance": 0.0}},
        "bake": {"class_type": "BakeTextureFromVoxel", "inputs": {"mesh": ["cuv", 0], "voxel_colors": ["dec", 2],
                                                                  "texture_size": 512}},
        "apply": {"class_type": "ApplyTextureToMesh", "inputs": {"mesh": ["cuv", 0], "base_color": ["bake", 0],
                                                                 "metallic": ["bake", 1], "roughness": ["bake", 2]}},
        "save_baked": _save(["apply", 0], "interop/core_baked"),
    })
    _run(comfy, prompt)
    _, ours = _glb(comfy, "interop/ours_core_mesh")
    assert "NORMAL" in ours["meshes"][0]["primitives"][0]["attributes"]
    _, filled = _glb(comfy, "interop/core_filled")
    # our core_mesh is compacted and already hole-filled: core's weld + fill keeps it (no collapse)
    assert _faces(filled) >= 0.98 * _faces(ours), (_faces(ours), _faces(filled))
    path, baked = _glb(comfy, "interop/core_baked")
    _textured_and_valid(path, baked, normals=False)


def test_core_mesh_into_our_nodes_and_our_outputs_into_core(comfy):
    prompt = _generation()
    prompt.update({
        "fill": _ours("Trellis2FillHoles", mesh=["dec", 1]),  # a core MESH into our mesh nodes
        "dcm": _ours("Trellis2DecimateMesh", mesh=["fill", 0], target_faces=3000),
        "uv": _ours("Trellis2UnwrapUV", mesh=["dcm", 0], texture_size=512),
        "export": _ours("Trellis2ExportGLB", mesh=["uv", 0], voxel=["dec", 2], texture_size=512, target_faces=3000,
                        filename_prefix="interop/ours_from_core"),
        "save_mesh": _save(["export", 1], "interop/export_core_mesh"),
        "save_file": _save(["export", 2], "interop/export_file3d"),
        "to_file": {"class_type": "MeshToFile3D", "inputs": {"mesh": ["export", 1]}},
        "preview_file": _ours("Trellis2PreviewGLB", glb_path="", model_3d=["to_file", 0]),
    })
    entry = _run(comfy, prompt)
    for prefix in ("interop/ours_from_core", "interop/export_core_mesh", "interop/export_file3d"):
        _textured_and_valid(*_glb(comfy, prefix))
    shown = entry["outputs"]["preview_file"]["trellis2_glb"][0]
    assert shown["type"] == "output" and (comfy.base / "output" / shown["subfolder"] / shown["filename"]).is_file()

    # core Load 3D's mesh_path is relative to input/: Preview GLB finds it there
    src, _ = _glb(comfy, "interop/ours_from_core")
    (comfy.base / "input" / "3d").mkdir(exist_ok=True)
    shutil.copy(src, comfy.base / "input" / "3d" / "model.glb")
    entry = _run(comfy, {"p": _ours("Trellis2PreviewGLB", glb_path="3d/model.glb")})
    assert entry["outputs"]["p"]["trellis2_glb"] == [{"filename": "model.glb", "subfolder": "3d", "type": "input"}]


def test_load_node_runs_cores_weight_files(comfy):
    info = comfy.get("/object_info/Trellis2LoadModel")["Trellis2LoadModel"]
    assert COMFY_SOURCE in info["input"]["required"]["source"][0]
    prompt = _generation(source=COMFY_SOURCE, resolution="1024_cascade")
    prompt["export"] = _ours("Trellis2ExportGLB", mesh=["dec", 0], texture_size=512, target_faces=3000,
                             filename_prefix="interop/core_weights")
    _run(comfy, prompt)
    _textured_and_valid(*_glb(comfy, "interop/core_weights"))
