"""Developer tool: the shipped workflows as API-format graphs, and their conversion to UI format.

``python tests/workflows/make_workflows.py api OUT_DIR`` writes ``<name>.api.json`` for each workflow. The UI files
in ``workflows/`` are made from them with the real ComfyUI frontend (``comfy_harness.sh to-ui API.json UI.json``,
i.e. ``app.loadApiJson`` + ``graph.serialize``) and then laid out with ``layout`` below:
``python tests/workflows/make_workflows.py layout UI.json...`` (positions, sizes, titles, groups, notes; ``PLANS``
below), then ``python workflows/make_thumbnails.py`` redraws the template thumbnails.
Regenerate whenever a node's inputs change; ``tests/workflows/test_workflow_files.py`` catches stale files,
``test_workflow_layout.py`` overlapping or too small nodes, ``test_thumbnails.py`` stale thumbnails.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script from the repository root: make ``tests`` and ``nodes`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.workflows.layout_rules import Box  # noqa: E402

FRONTEND_ONLY_NOTES = ("Note", "MarkdownNote")

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
        "1": _node("LoadImage", "Load Image", image=IMAGE),
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
@dataclass(frozen=True)
class Group:
    """A titled frame (``title`` None: no frame) holding columns of nodes, each listed top to bottom.

    Items are API node ids or ``note:<key>`` for a MarkdownNote with ``NOTES[key]`` (title, text).
    """
    title: str | None
    columns: tuple[tuple[str, ...], ...]
    color: str = "#3f789e"


BLUE, GREEN, YELLOW, PURPLE, CYAN = "#3f789e", "#8A8", "#b58b2a", "#88A", "#8AA"  # LiteGraph group colours
_STAGED_GROUPS = (
    Group("1 · Picture and model", (("note:staged_start", "1", "3"),), BLUE),
    Group("2 · Cut out, encode", (("2", "4", "13"),), GREEN),
    Group("3 · Sample (seeded)", (("5", "6", "7"),), YELLOW),
    Group("4 · Mesh", (("8", "9", "10", "11", "14"),), PURPLE),
    Group("5 · Export", (("12", "note:staged_export"),), CYAN),
)
PLANS: dict[str, tuple[tuple[Group, ...], ...]] = {  # rows of groups, top to bottom; groups left to right
    "trellis2_simple": ((Group(None, (("note:simple", "1", "3"), ("2", "note:simple_out"), ("4",))),),),
    "trellis2_staged": (_STAGED_GROUPS,),
    "trellis2_low_vram": (tuple(
        Group(g.title, tuple(tuple(i for i in col if i not in ("13", "14")) for col in g.columns), g.color)
        for g in _STAGED_GROUPS),),
    "trellis2_texture_mesh": ((
        Group("1 · Picture", (("1", "2", "4"),), BLUE),
        Group("2 · Model and your mesh", (("note:texture_start", "3", "5", "6"),), PURPLE),
        Group("3 · Texture and bake", (("7", "note:texture_out"), ("8", "9")), YELLOW),
    ),),
    "trellis2_mixed_core": ((
        Group("1 · Picture and model", (("note:mixed_start", "1", "3"),), BLUE),
        Group("2 · Cut out, encode", (("2", "4"),), GREEN),
        Group("3 · Sample (seeded)", (("5", "6", "7", "note:mixed_out"),), YELLOW),
        Group("4 · Mesh: core Fill Holes, then ours", (("8", "9", "10", "11"),), PURPLE),
        Group("5 · Export, core Save GLB", (("12", "13"),), CYAN),
    ),),
    "trellis2_sdxl_text_to_3d": (
        (Group("1 · SDXL paints the picture", (("1", "4"), ("2", "3"), ("5", "6"), ("7",)), BLUE),),
        (Group("2 · TRELLIS.2 turns it into a textured GLB", (("note:sdxl", "note:sdxl_3d", "9"), ("8",), ("10",)),
               GREEN),),
    ),
}
_SEEDS = ("Sample Structure's `seed` drives all three samplers; `stage_seed` = 0 continues its random stream "
          "(the official single-seed result), another value re-rolls only that stage.")
NOTES = {  # key: (title, Markdown text)
    "simple": (
        "Start here",
        "1. **Load Image**: choose your picture: one object, ideally a PNG with a transparent background "
        "(otherwise Remove Background cuts the object out).\n"
        "2. **Load TRELLIS.2 Model**: `microsoft/TRELLIS.2-4B` uses `models/trellis2/TRELLIS.2-4B` when present, "
        "else it downloads. On a 6–12 GB GPU set `vram_preset` to `low`.\n"
        "3. Queue."),
    "simple_out": (
        "Result",
        "**Image to 3D** writes `output/trellis2/simple_00001_.glb` and shows it in its 3D preview.\n"
        "- `resolution`: `1536_cascade` for more detail, `512` for speed.\n"
        "- `target_faces`, `texture_size`: smaller files.\n"
        "- another `seed`: another result."),
    "staged_start": (
        "Start here",
        "1. **Load Image**: choose your picture (one object; a transparent PNG works best).\n"
        "2. **Load TRELLIS.2 Model**: on a 6–12 GB GPU set `vram_preset` to `low`.\n"
        "3. Queue. Change a setting and queue again: only the nodes after it run again.\n"
        "\n" + _SEEDS),
    "low_vram_start": (
        "Start here: for 6–12 GB GPUs",
        "1. **Load Image**: choose your picture (one object; a transparent PNG works best).\n"
        "2. **Load TRELLIS.2 Model** has `vram_preset` = `low`: weights stay in RAM (~16 GB), each block is "
        "streamed to the GPU (≤ 4 GB of tensors at 1024).\n"
        "3. Queue.\n"
        "\n" + _SEEDS),
    "staged_export": (
        "Output",
        "**Export GLB** bakes the PBR textures and writes `output/trellis2/staged_00001_.glb`. **Core Save GLB** "
        "saves ComfyUI's own MESH from Decode Mesh: geometry only."),
    "low_vram_export": (
        "Output",
        "**Export GLB** writes `output/trellis2/low_vram_00001_.glb`. Smaller than the staged example: 200k faces, "
        "1024² textures. `max_num_tokens` (Sample Shape) caps memory for `1536_cascade` only."),
    "sdxl": (
        "Start here",
        "1. **Load SDXL Checkpoint**: pick an SDXL checkpoint.\n"
        "2. **Prompt**: ask for one whole object on a plain background.\n"
        "3. Queue."),
    "sdxl_3d": (
        "Image to 3D",
        "The matting model (`ZhengPeng7/BiRefNet`, downloaded once) cuts the object out; **Image to 3D** writes "
        "`output/trellis2/sdxl_00001_.glb`. On a 6–12 GB GPU set `vram_preset` to `low`."),
}
NOTES.update({
    "texture_start": (
        "Start here",
        "1. **Load Image**: a picture of the object (one object; a transparent PNG works best).\n"
        "2. **Load Mesh**: upload your GLB/OBJ/PLY (one object; it goes to `input/3d`).\n"
        "3. Queue.\n"
        "\n"
        "Encode Mesh's `resolution`: 512 / 1024 / 1536 (detail vs. time); `stage_seed` 0 = the official texturing "
        "run."),
    "texture_out": (
        "Output",
        "**Bake onto Mesh** writes `output/trellis2/textured_00001_.glb`: your mesh's vertices, faces, UVs and "
        "placement with PBR textures (a mesh without UVs is unwrapped). **Core Preview 3D** shows it."),
})
NOTES.update({
    "mixed_start": (
        "Start here",
        "1. **Load Image**: choose your picture (one object; a transparent PNG works best).\n"
        "2. **Load TRELLIS.2 Model**: on a 6–12 GB GPU set `vram_preset` to `low`.\n"
        "3. Queue.\n"
        "\n"
        "This graph mixes ComfyUI's own 3D nodes with this pack's: Decode Mesh's `core_mesh` is a ComfyUI MESH."),
    "mixed_out": (
        "Output",
        "**Core Fill Holes** works on Decode Mesh's `core_mesh`; this pack's **Decimate** / **UV Unwrap** take the "
        "core MESH back; **Export GLB** bakes from Decode Mesh's `voxel` (a ComfyUI VOXEL) and writes "
        "`output/trellis2/mixed_00001_.glb`; **Core Save GLB** saves its textured `core_mesh`."),
})
NOTE_FOR = {"trellis2_low_vram": {"note:staged_start": "note:low_vram_start",
                                  "note:staged_export": "note:low_vram_export"}}
NODE_W = 300
WIDTHS = {"Trellis2ImageTo3D": 420, "Trellis2ExportGLB": 420, "CLIPTextEncode": 400}  # 420: the 3D preview's
HEIGHTS = {"Trellis2ExportGLB": 560, "PreviewImage": 280, "SaveGLB": 340,
           "CLIPTextEncode": 130, "LoadImage": 330}  # more than the content needs: room for the pictures/text
COL_GAP, ROW_GAP, GROUP_GAP, GROUP_PAD = 50, 36, 30, 15
GROUP_FONT = 24
VIEW = (60, 90, 1600, 1000)  # the canvas of a 1600×1000 browser window left free by ComfyUI's bars (pixels)


def _schema(node_type: str) -> tuple[dict, tuple[str, ...]]:
    from nodes import NODE_CLASS_MAPPINGS
    from tests.workflows.core_nodes import CORE_OUTPUTS, CORE_SCHEMAS

    cls = NODE_CLASS_MAPPINGS.get(node_type)
    if cls is not None:
        return cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES)
    return CORE_SCHEMAS[node_type], CORE_OUTPUTS[node_type]


def _note(note_id: int, title: str, text: str) -> dict[str, Any]:
    return {"id": note_id, "type": "MarkdownNote", "title": title, "pos": [0, 0], "size": [NODE_W, 100],
            "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def _fit_view(box: Box) -> dict[str, Any]:
    left, top, right, bottom = VIEW
    scale = math.floor(min(1.0, 0.94 * (right - left) / box.w, 0.94 * (bottom - top) / box.h) * 100) / 100
    ox = (left + (right - left - box.w * scale) / 2) / scale - box.x0  # screen = (canvas + offset) * scale
    oy = (top + (bottom - top - box.h * scale) / 2) / scale - box.y0
    return {"scale": scale, "offset": [round(ox, 1), round(oy, 1)]}


def layout(ui: dict[str, Any], name: str) -> dict[str, Any]:
    """Place the nodes by ``PLANS[name]`` (groups in rows, columns of nodes), titles from the API definition,
    notes from ``NOTES``; sizes at least what each node's widgets need. Idempotent: old notes/groups are replaced."""
    from tests.workflows.layout_rules import TITLE_H, min_size, node_box, note_min_height

    api = WORKFLOWS[name]()
    ui["nodes"] = [n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY_NOTES]
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: v["class_type"] for k, v in api.items()} == {k: n["type"] for k, n in by_id.items()}, \
        f"{name}: the UI file's nodes are not the definition's: convert it again"
    plan = PLANS[name]
    placed = [i for row in plan for g in row for col in g.columns for i in col if not i.startswith("note:")]
    assert sorted(placed) == sorted(by_id), f"{name}: the plan must place every node once"
    for node in ui["nodes"]:  # shipped examples are reproducible: seeds stay fixed after a run
        node["title"] = api[str(node["id"])]["_meta"]["title"]
        values = node.get("widgets_values")
        if isinstance(values, list):
            node["widgets_values"] = ["fixed" if v == "randomize" else v for v in values]
    next_id = max(int(k) for k in by_id) + 1
    groups: list[dict[str, Any]] = []

    def item_node(item: str) -> dict[str, Any]:
        nonlocal next_id
        if not item.startswith("note:"):
            return by_id[item]
        item = NOTE_FOR.get(name, {}).get(item, item)
        note = _note(next_id, *NOTES[item.split(":", 1)[1]])
        next_id += 1
        ui["nodes"].append(note)
        return note

    def height(node: dict[str, Any], width: float) -> float:
        if node["type"] == "MarkdownNote":
            return note_min_height(node["widgets_values"][0], width) + 10
        schema, outputs = _schema(node["type"])
        return max(min_size(node, schema, outputs)[1], HEIGHTS.get(node["type"], 0))

    def width(node: dict[str, Any]) -> float:
        if node["type"] == "MarkdownNote":
            return NODE_W
        schema, outputs = _schema(node["type"])
        return max(WIDTHS.get(node["type"], NODE_W), math.ceil(min_size(node, schema, outputs)[0] / 10) * 10)

    y = 0.0
    for row in plan:
        x, row_bottom = 0.0, y
        for group in row:
            framed = group.title is not None
            top = y + (GROUP_PAD + GROUP_FONT * 1.4 if framed else 0)
            cx, bottom = x + (GROUP_PAD if framed else 0), top
            for column in group.columns:
                nodes = [item_node(i) for i in column]
                col_w = max(width(n) for n in nodes)
                cy = top
                for node in nodes:
                    node["pos"] = [cx, cy + TITLE_H]
                    node["size"] = [col_w, height(node, col_w)]
                    cy += TITLE_H + node["size"][1] + ROW_GAP
                bottom = max(bottom, cy - ROW_GAP)
                cx += col_w + COL_GAP
            right = cx - COL_GAP + (GROUP_PAD if framed else 0)
            bottom += GROUP_PAD if framed else 0
            if framed:
                groups.append({"id": len(groups) + 1, "title": group.title, "bounding": [x, y, right - x, bottom - y],
                               "color": group.color, "font_size": GROUP_FONT, "flags": {}})
            x = right + GROUP_GAP
            row_bottom = max(row_bottom, bottom)
        y = row_bottom + GROUP_GAP
    for node in ui["nodes"]:
        node["pos"] = [round(v, 1) for v in node["pos"]]
        node["size"] = [round(v, 1) for v in node["size"]]
    ui["nodes"].sort(key=lambda n: n["id"])
    ui["groups"] = groups
    ui["last_node_id"] = max(n["id"] for n in ui["nodes"])
    boxes = [node_box(n) for n in ui["nodes"]] + [Box(x, y, x + w, y + h) for x, y, w, h in
                                                  (g["bounding"] for g in groups)]
    box = boxes[0]
    for b in boxes[1:]:
        box = box.union(b)
    ui.setdefault("extra", {})["ds"] = _fit_view(box)  # a template opens showing the whole graph
    return ui


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "api":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, make in WORKFLOWS.items():
            (out / f"{name}.api.json").write_text(json.dumps(make(), indent=1) + "\n")
        return 0
    if len(argv) >= 3 and argv[1] == "layout":
        for path in map(Path, argv[2:]):
            ui = json.loads(path.read_text())
            path.write_text(json.dumps(layout(ui, path.stem), indent=1, ensure_ascii=False) + "\n")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
