"""Developer tool: the shipped workflows as API-format graphs, and their conversion to UI format.

``python tests/workflows/make_workflows.py api OUT_DIR`` writes ``<name>.api.json`` for each workflow. The UI files
in ``workflows/`` are made from them with the real ComfyUI frontend (``comfy_harness.sh to-ui API.json UI.json``,
i.e. ``app.loadApiJson`` + ``graph.serialize``) and then laid out with ``layout`` below:
``python tests/workflows/make_workflows.py layout UI.json`` (positions, sizes, titles, groups, notes).
Regenerate whenever a node's inputs change; ``tests/workflows/test_workflow_files.py`` catches stale files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SOURCE = "microsoft/TRELLIS.2-4B"
IMAGE = "example.png"  # ships in every ComfyUI input/ folder; replace it with your picture
SDXL = "sd_xl_base_1.0.safetensors"
SEED = 42
MESH = "3d/mesh.glb"  # the user's mesh, uploaded through Load Mesh (ComfyUI's input/3d folder)


def _sampler(stage: str) -> dict[str, Any]:
    d = {"ss": (12, 7.5, 0.7, 0.6, 1.0, 5.0), "shape": (12, 7.5, 0.5, 0.6, 1.0, 3.0),
         "tex": (12, 1.0, 0.0, 0.6, 0.9, 3.0)}[stage]
    keys = ("steps", "guidance_strength", "guidance_rescale", "guidance_interval_start", "guidance_interval_end",
            "rescale_t")
    return dict(zip(keys, d))


def _export(prefix: str, texture_size: int = 2048, target_faces: int = 500_000) -> dict[str, Any]:
    return {"filename_prefix": prefix, "texture_size": texture_size, "target_faces": target_faces,
            "alpha_mode": "OPAQUE", "double_sided": True, "texture_format": "png"}


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _loader(preset: str = "auto") -> dict[str, Any]:
    return _node("Trellis2LoadModel", "Load TRELLIS.2 Model", source=SOURCE, precision="auto",
                 attention_backend="auto", vram_preset=preset, device="auto", custom_source="", speed="fast")


def simple() -> dict[str, Any]:
    """Image → GLB with the one-node pipeline."""
    return {
        "1": _node("LoadImage", "Load Image (object on transparent background, or any photo)", image=IMAGE),
        "2": _node("Trellis2RemoveBackground", "Remove Background", image=["1", 0], mask=["1", 1], method="auto",
                   max_size=1024, invert_mask=False, matting_model="ZhengPeng7/BiRefNet"),
        "3": _loader(),
        "4": _node("Trellis2ImageTo3D", "Image to 3D", pipeline=["3", 0], image=["2", 0], mask=["2", 1],
                   seed=SEED, resolution="1024_cascade", steps=12, **_export("trellis2/simple")),
    }


def _staged(image_src: list, mask_src: list | None, preset: str, resolution: str, max_tokens: int,
            target_faces: int, texture_size: int, prefix: str, first_id: int) -> dict[str, Any]:
    i = first_id
    ids = {k: str(i + n) for n, k in enumerate(("bg", "load", "enc", "ss", "shape", "mat", "dec", "holes", "dmesh",
                                                  "uv", "export"))}
    bg_inputs = {"image": image_src, "method": "auto", "max_size": 1024, "invert_mask": False,
                 "matting_model": "ZhengPeng7/BiRefNet"}
    if mask_src is not None:
        bg_inputs["mask"] = mask_src
    return {
        ids["bg"]: _node("Trellis2RemoveBackground", "Remove Background", **bg_inputs),
        ids["load"]: _loader(preset),
        ids["enc"]: _node("Trellis2EncodeImage", "Encode Image (DINOv3)", pipeline=[ids["load"], 0],
                          image=[ids["bg"], 0], mask=[ids["bg"], 1], resolutions="512 and 1024", preprocess=True),
        ids["ss"]: _node("Trellis2SampleStructure", "Sample Structure", pipeline=[ids["load"], 0],
                         conditioning=[ids["enc"], 0], seed=SEED, **_sampler("ss")),
        ids["shape"]: _node("Trellis2SampleShape", "Sample Shape", pipeline=[ids["load"], 0],
                            conditioning=[ids["enc"], 0], structure=[ids["ss"], 0], resolution=resolution,
                            max_num_tokens=max_tokens, stage_seed=0, **_sampler("shape")),
        ids["mat"]: _node("Trellis2SampleMaterial", "Sample Material", pipeline=[ids["load"], 0],
                          conditioning=[ids["enc"], 0], shape=[ids["shape"], 0], stage_seed=0, **_sampler("tex")),
        ids["dec"]: _node("Trellis2DecodeMesh", "Decode Mesh", pipeline=[ids["load"], 0], shape=[ids["shape"], 0],
                          material=[ids["mat"], 0]),
        ids["holes"]: _node("Trellis2FillHoles", "Fill Holes", mesh=[ids["dec"], 0], max_perimeter=0.03),
        ids["dmesh"]: _node("Trellis2DecimateMesh", "Decimate Mesh", mesh=[ids["holes"], 0],
                            target_faces=target_faces, min_component_area=1e-5),
        ids["uv"]: _node("Trellis2UnwrapUV", "UV Unwrap", mesh=[ids["dmesh"], 0], texture_size=texture_size,
                         padding=2, max_cone_angle=60.0),
        ids["export"]: _node("Trellis2ExportGLB", "Export GLB", mesh=[ids["uv"], 0],
                             **_export(prefix, texture_size, target_faces), remesh=False),
    }


def staged() -> dict[str, Any]:
    """Every stage as its own node, every knob exposed, plus core interop (SaveGLB on the core MESH)."""
    graph = {"1": _node("LoadImage", "Load Image", image=IMAGE)}
    graph.update(_staged(["1", 0], ["1", 1], "auto", "1024_cascade", 49152, 500_000, 2048, "trellis2/staged", 2))
    graph["13"] = _node("PreviewImage", "What the model sees", images=["4", 1])
    graph["14"] = _node("SaveGLB", "Core Save GLB (geometry only)", mesh=["8", 1], filename_prefix="trellis2/core")
    return graph


def sdxl() -> dict[str, Any]:
    """SDXL text → image → background removal → TRELLIS.2 → GLB, with ComfyUI's core nodes."""
    return {
        "1": _node("CheckpointLoaderSimple", "Load SDXL Checkpoint", ckpt_name=SDXL),
        "2": _node("CLIPTextEncode", "Prompt", clip=["1", 1],
                   text="a single red vintage toy robot, full body, centered, isolated on a plain white background, "
                        "studio product photo, soft light"),
        "3": _node("CLIPTextEncode", "Negative prompt", clip=["1", 1],
                   text="multiple objects, cropped, cut off, text, watermark, busy background, shadow"),
        "4": _node("EmptyLatentImage", "Image size", width=1024, height=1024, batch_size=1),
        "5": _node("KSampler", "KSampler", model=["1", 0], positive=["2", 0], negative=["3", 0],
                   latent_image=["4", 0], seed=SEED, steps=25, cfg=7.0, sampler_name="euler",
                   scheduler="normal", denoise=1.0),
        "6": _node("VAEDecode", "VAE Decode", samples=["5", 0], vae=["1", 2]),
        "7": _node("PreviewImage", "SDXL image", images=["6", 0]),
        "8": _node("Trellis2RemoveBackground", "Remove Background", image=["6", 0], method="model", max_size=1024,
                   invert_mask=False, matting_model="ZhengPeng7/BiRefNet", pipeline=["9", 0]),
        "9": _loader(),
        "10": _node("Trellis2ImageTo3D", "Image to 3D", pipeline=["9", 0], image=["8", 0], mask=["8", 1],
                    seed=SEED, resolution="1024_cascade", steps=12, **_export("trellis2/sdxl")),
    }


def low_vram() -> dict[str, Any]:
    """Staged graph for ~6–12 GB GPUs: blocks streamed from RAM (vram_preset low), fewer tokens, smaller textures."""
    graph = {"1": _node("LoadImage", "Load Image", image=IMAGE)}
    graph.update(_staged(["1", 0], ["1", 1], "low", "1024_cascade", 24576, 200_000, 1024, "trellis2/low_vram", 2))
    return graph


def texture_mesh() -> dict[str, Any]:
    """A user's mesh + a reference image → the same mesh with TRELLIS.2 PBR textures, shown in core Preview 3D."""
    return {
        "1": _node("LoadImage", "Load Image (reference picture of the object)", image=IMAGE),
        "2": _node("Trellis2RemoveBackground", "Remove Background", image=["1", 0], mask=["1", 1], method="auto",
                   max_size=1024, invert_mask=False, matting_model="ZhengPeng7/BiRefNet"),
        "3": _loader(),
        "4": _node("Trellis2EncodeImage", "Encode Image (DINOv3)", pipeline=["3", 0], image=["2", 0],
                   mask=["2", 1], resolutions="512 and 1024", preprocess=True),
        "5": _node("Trellis2LoadMesh", "Load Mesh (your GLB/OBJ/PLY, one object)", mesh_file=MESH),
        "6": _node("Trellis2EncodeMesh", "Encode Mesh", pipeline=["3", 0], mesh=["5", 0], resolution=1024,
                   seed=SEED),
        "7": _node("Trellis2SampleMaterial", "Sample Material", pipeline=["3", 0], conditioning=["4", 0],
                   shape=["6", 0], stage_seed=0, **_sampler("tex")),
        "8": _node("Trellis2BakeOntoMesh", "Bake onto Mesh", pipeline=["3", 0], material=["7", 0], mesh=["5", 0],
                   filename_prefix="trellis2/textured", texture_size=2048, unwrap="auto", texture_format="png",
                   double_sided=True),
        "9": _node("Preview3D", "Core Preview 3D", model_file=["8", 0]),
    }


def mixed_core() -> dict[str, Any]:
    """Our generation, ComfyUI core's mesh nodes in between, our export, core's Save GLB of the textured MESH."""
    graph = {"1": _node("LoadImage", "Load Image", image=IMAGE)}
    staged = _staged(["1", 0], ["1", 1], "auto", "1024_cascade", 49152, 500_000, 2048, "trellis2/mixed", 2)
    for key in ("9", "10", "11"):  # our Fill Holes, Decimate, UV Unwrap are replaced below
        del staged[key]
    graph.update(staged)
    graph["9"] = _node("FillHoles", "Core Fill Holes (on core_mesh)", mesh=["8", 1], max_perimeter=0.03,
                       weld_epsilon_rel=1e-5, max_vertices=16, fill_chains=False)
    graph["10"] = _node("Trellis2DecimateMesh", "Decimate Mesh (core MESH in)", mesh=["9", 0],
                        target_faces=500_000, min_component_area=1e-5)
    graph["11"] = _node("Trellis2UnwrapUV", "UV Unwrap", mesh=["10", 0], texture_size=2048, padding=2,
                        max_cone_angle=60.0)
    graph["12"]["inputs"].update(mesh=["11", 0], voxel=["8", 2])  # Export GLB bakes from Decode Mesh's VOXEL
    graph["13"] = _node("SaveGLB", "Core Save GLB (textured core MESH)", mesh=["12", 1],
                        filename_prefix="trellis2/mixed_core")
    return dict(sorted(graph.items(), key=lambda kv: int(kv[0])))  # the frontend links nodes in this order


WORKFLOWS = {"trellis2_simple": simple, "trellis2_staged": staged, "trellis2_sdxl_text_to_3d": sdxl,
             "trellis2_low_vram": low_vram, "trellis2_texture_mesh": texture_mesh,
             "trellis2_mixed_core": mixed_core}

# -------------------------------------------------------------------------------------------------- layout
NOTES = {
    "trellis2_simple": "Image → GLB in one node. Put the TRELLIS.2-4B folder in models/trellis2/ (see README), "
                       "load your picture (a PNG with a transparent background works best) and queue.",
    "trellis2_staged": "Every stage as a node: change a sampler or mesh setting and only the nodes after it run "
                       "again. Shape/Material seed 0 continues the structure seed's random stream (= the official "
                       "single-seed result).",
    "trellis2_sdxl_text_to_3d": "SDXL makes the picture (ask for one object on a plain background), the matting "
                                "model cuts it out, TRELLIS.2 turns it into a textured GLB.",
    "trellis2_low_vram": "For 6–12 GB GPUs: vram_preset low streams each transformer/decoder block from RAM (≤ 4 GB "
                         "of tensors at 1024; ComfyUI unloads its own models first), max_num_tokens 24576, 200k "
                         "faces, 1024² textures.",
    "trellis2_texture_mesh": "Texture YOUR mesh: upload a GLB/OBJ/PLY (one object) in Load Mesh and a picture of "
                             "the object in Load Image, then queue. The GLB keeps the mesh's vertices, faces, UVs and "
                             "placement (a mesh without UVs is unwrapped). Encode Mesh's resolution: 512 / 1024 / "
                             "1536 (detail vs. time); stage_seed 0 = the official texturing run.",
    "trellis2_mixed_core": "Next to ComfyUI's own 3D nodes: Decode Mesh's core_mesh (ComfyUI MESH) goes through "
                           "core's Fill Holes and back into this pack's Decimate / UV Unwrap; Export GLB bakes from "
                           "Decode Mesh's voxel output and hands its textured core_mesh to core's Save GLB.",
}
COLUMN_X = 40
COLUMN_W = 380


def layout(ui: dict[str, Any], name: str) -> dict[str, Any]:
    """Left-to-right columns in execution order, titles from the API ``_meta``, a note at the top left."""
    by_id = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui["links"]}
    depth: dict[int, int] = {}

    def level(nid: int) -> int:
        if nid not in depth:
            ins = [links[i["link"]][1] for i in by_id[nid].get("inputs", []) if i.get("link") is not None]
            depth[nid] = 1 + max((level(s) for s in ins), default=-1)
        return depth[nid]

    for node in ui["nodes"]:  # shipped examples are reproducible: seeds stay fixed after a run
        values = node.get("widgets_values")
        if isinstance(values, list):
            node["widgets_values"] = ["fixed" if v == "randomize" else v for v in values]
    rows: dict[int, int] = {}
    for nid in sorted(by_id, key=lambda k: (level(k), k)):
        col = level(nid)
        node = by_id[nid]
        y = rows.get(col, 140)
        node["pos"] = [0, y]  # x once every column's width is known
        w, h = node.get("size", [COLUMN_W, 200])
        node["size"] = [max(w, COLUMN_W - 40), h]
        if node["type"] in ("Trellis2ExportGLB", "Trellis2ImageTo3D", "Trellis2BakeOntoMesh"):
            node["size"] = [440, max(h, 640)]  # room for the 3D preview widget
        elif node["type"] == "Preview3D":
            node["size"] = [COLUMN_W + 20, 550]  # core's 3D viewer asks for at least 400 × 550
        elif node["type"] in ("PreviewImage", "SaveGLB"):
            node["size"] = [COLUMN_W - 40, 360]  # room for the image / core 3D viewer
        rows[col] = y + node["size"][1] + 60
    x, widths = COLUMN_X, {}
    for nid, node in by_id.items():
        widths[level(nid)] = max(widths.get(level(nid), COLUMN_W), node["size"][0])
    starts = {}
    for col in sorted(widths):  # a column starts 40 px right of the widest node before it (or of COLUMN_W)
        starts[col], x = x, x + widths[col] + 40
    for nid, node in by_id.items():
        node["pos"][0] = starts[level(nid)]
    note_id = max(by_id) + 1
    ui["nodes"].append({"id": note_id, "type": "Note", "pos": [COLUMN_X, -40], "size": [COLUMN_W * 2, 120],
                        "flags": {}, "order": len(ui["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "properties": {}, "widgets_values": [NOTES[name]]})
    ui["last_node_id"] = max(ui.get("last_node_id", 0), note_id)
    ui.setdefault("extra", {})["ds"] = {"scale": 0.7, "offset": [20, 80]}  # opening view: the first columns
    return ui


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "api":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, make in WORKFLOWS.items():
            (out / f"{name}.api.json").write_text(json.dumps(make(), indent=1) + "\n")
        return 0
    if len(argv) == 3 and argv[1] == "layout":
        path = Path(argv[2])
        ui = json.loads(path.read_text())
        name = path.name[: -len(".json")]
        path.write_text(json.dumps(layout(ui, name), indent=1) + "\n")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
