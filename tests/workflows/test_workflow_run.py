"""Execute every shipped workflow in-process on the tiny golden pipeline (CPU).

The graphs run as ComfyUI would run them (UI → API conversion, output nodes and their ancestors, cached outputs),
with our real nodes. Core nodes are CPU stand-ins (``core_nodes.py``): SDXL's picture is a fixed asset image on a
white background, and background removal's model is a tiny stand-in matting model. For speed the sampler steps
are 1, the resolution 512 and the textures 256² (the real-ComfyUI test runs the files unchanged).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from nodes import NODE_CLASS_MAPPINGS
from tests.tools.meshes import uv_mesh
from tests.workflows.core_nodes import make_core_stubs
from tests.workflows.graph import Executor, ui_to_api
from tests.workflows.make_workflows import MESH
from tests.workflows.test_workflow_files import FILES, schemas
from tests.workflows.tiny_matting import make_tiny_matting

ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "images"
FAST = {"steps": 1, "resolution": "512", "texture_size": 256, "target_faces": 1000, "resolutions": "512 only"}
FAST_BY_NODE = {"Trellis2EncodeMesh": {"resolution": 64}}  # the texturing grid is an INT


def fast(prompt: dict, tiny: Path, tiny_texturing: Path | None = None) -> dict:
    """The same graph with CPU-test settings (constant widget inputs only; links stay); a texturing graph runs on
    the tiny texturing pipeline (the tiny pipeline plus the shape encoder and texturing_pipeline.json)."""
    prompt = json.loads(json.dumps(prompt))
    texturing = any(n["class_type"] == "Trellis2EncodeMesh" for n in prompt.values())
    if texturing and (tiny_texturing is None or not (tiny_texturing / "texturing_pipeline.json").is_file()):
        pytest.skip(f"tiny texturing pipeline not found at {tiny_texturing}")
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "Trellis2LoadModel":
            inputs.update(custom_source=str(tiny_texturing if texturing else tiny), device="cpu", precision="float32")
        if node["class_type"].startswith("Trellis2"):
            for key, value in {**FAST, **FAST_BY_NODE.get(node["class_type"], {})}.items():
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = value
    return prompt


def check_glb(path: Path) -> dict:
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert (magic, version, length) == (b"glTF", 2, len(data)), f"{path} is not a complete GLB"
    size, kind = struct.unpack("<I4s", data[12:20])
    gltf = json.loads(data[20:20 + size])
    assert gltf["meshes"] and gltf["images"] and gltf["materials"][0]["pbrMetallicRoughness"]
    return gltf


@pytest.fixture(scope="module")
def env(golden_dir, tmp_path_factory):
    tiny = golden_dir / "tiny-pipeline"
    if not (tiny / "pipeline.json").is_file() or not (ASSETS / "T.png").is_file():
        pytest.skip("tiny pipeline or asset images missing")
    root = tmp_path_factory.mktemp("comfy")
    for sub in ("input", "output", "models"):
        (root / sub).mkdir()
    Image.open(ASSETS / "T.png").resize((512, 512), Image.LANCZOS).save(root / "input" / "example.png")
    other = sorted(p for p in ASSETS.glob("*.webp"))[0]
    obj = Image.open(other).convert("RGBA").resize((512, 512), Image.LANCZOS)
    picture = Image.new("RGBA", obj.size, (255, 255, 255, 255))
    picture.alpha_composite(obj)
    make_tiny_matting(root / "models" / "rembg" / "BiRefNet")
    (root / "input" / MESH).parent.mkdir(parents=True)
    uv_mesh().export(root / "input" / MESH)  # the user's mesh of the texturing workflow
    calls: dict[str, list] = {}
    classes = dict(NODE_CLASS_MAPPINGS)
    classes.update(make_core_stubs(root / "input", picture.convert("RGB"), calls))
    return {"root": root, "tiny": tiny, "tiny_texturing": golden_dir / "texturing" / "tiny-pipeline",
            "executor": Executor(classes), "calls": calls}


@pytest.fixture()
def comfy_dirs(env, monkeypatch):
    monkeypatch.setenv("TRELLIS2_OUTPUT_DIR", str(env["root"] / "output"))
    monkeypatch.setenv("TRELLIS2_INPUT_DIR", str(env["root"] / "input"))
    monkeypatch.setenv("TRELLIS2_MODELS_DIR", str(env["root"] / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return env


def _glbs(root: Path) -> set[Path]:
    return set((root / "output").rglob("*.glb"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_runs_to_a_glb(path, comfy_dirs):
    env = comfy_dirs
    prompt = fast(ui_to_api(json.loads(path.read_text()), schemas()), env["tiny"], env["tiny_texturing"])
    before = _glbs(env["root"])
    uis = env["executor"].run(prompt)
    new = _glbs(env["root"]) - before
    assert len(new) == 1, f"expected one new GLB, got {sorted(map(str, new))}"
    glb = new.pop()
    check_glb(glb)
    entries = [e for ui in uis.values() for e in ui.get("trellis2_glb", [])]
    assert [(e["subfolder"], e["filename"]) for e in entries] == [
        (glb.parent.relative_to(env["root"] / "output").as_posix(), glb.name)]
    assert entries[0]["faces"] > 0 and entries[0]["vertices"] > 0
    if path.stem == "trellis2_staged":
        (save,) = env["calls"]["SaveGLB"][-1:]  # core SaveGLB got a core MESH [1, V, 3] / [1, F, 3]
        assert save["vertices"][0] == 1 and save["vertices"][2] == 3 and save["faces"][2] == 3
    if path.stem == "trellis2_texture_mesh":
        rel = glb.relative_to(env["root"] / "output").as_posix()
        assert env["calls"]["Preview3D"][-1] == {"model_file": rel, "exists": True}  # core Preview3D got the path
        a = trimesh.load(env["root"] / "input" / MESH, process=False, force="mesh")
        b = trimesh.load(glb, process=False, force="mesh")
        assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
        assert np.array_equal(a.visual.uv, b.visual.uv)
    if path.stem == "trellis2_sdxl_text_to_3d":
        assert env["calls"].get("VAEDecode"), "the SDXL branch ran"


def test_changing_a_downstream_knob_reruns_only_downstream_nodes(comfy_dirs):
    """ComfyUI's cache stays correct: a new export setting re-runs Export only (no restart, no stale mesh)."""
    env = comfy_dirs
    path = next(p for p in FILES if p.stem == "trellis2_staged")
    prompt = fast(ui_to_api(json.loads(path.read_text()), schemas()), env["tiny"])
    executor = env["executor"]
    executor.run(prompt)  # cached from the test above when it ran first
    export_id = next(k for k, v in prompt.items() if v["class_type"] == "Trellis2ExportGLB")
    prompt[export_id]["inputs"]["alpha_mode"] = "BLEND"
    before = _glbs(env["root"])
    executor.run(prompt)
    assert executor.executed == [export_id]
    (glb,) = _glbs(env["root"]) - before
    assert check_glb(glb)["materials"][0]["alphaMode"] == "BLEND"
    decimate_id = next(k for k, v in prompt.items() if v["class_type"] == "Trellis2DecimateMesh")
    prompt[decimate_id]["inputs"]["target_faces"] = 500
    executor.run(prompt)
    uv_id = next(k for k, v in prompt.items() if v["class_type"] == "Trellis2UnwrapUV")
    assert sorted(executor.executed) == sorted([decimate_id, uv_id, export_id])
