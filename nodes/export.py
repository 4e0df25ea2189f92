"""Export GLB and Preview GLB nodes: textured GLB files under ComfyUI's output folder + the three.js preview (§9).

Files are written atomically by the library (temporary file + rename), so a cancelled or failed export never leaves
a half-written GLB. The UI output ``trellis2_glb`` lists the written files; ``web/trellis2_preview.js`` shows them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trellis2_core.errors import InputError
from trellis2_core.postprocess import ExportConfig, ExportReport, export_glb
from trellis2_core.postprocess.glb import ALPHA_MODES, TEXTURE_FORMATS
from trellis2_core.postprocess.output_file import write_atomically

from . import comfy_bridge as bridge
from .core_io import mesh_assets, textured_core_mesh, with_voxels
from .paths import DEFAULT_PREFIX, filename_prefix_input, next_output_path
from .runtime import StageProgress, comfy_errors
from .types import CATEGORY, CORE_FILE_3D_ANY, CORE_FILE_3D_GLB, CORE_MESH, CORE_VOXEL, MESH_IN, STRING, MeshAsset

__all__ = ["Trellis2ExportGLB", "Trellis2PreviewGLB", "UI_KEY", "export_inputs", "export_config", "write_items"]

UI_KEY = "trellis2_glb"  # the ui-output key our web extension reads
_DEFAULT = ExportConfig()  # the library's defaults (official demo settings) are the widgets' defaults


def export_inputs() -> dict[str, tuple]:
    """GLB export widgets (shared with Image to 3D)."""
    return {
        "texture_size": ("INT", {"default": _DEFAULT.texture_size, "min": 256, "max": 8192, "step": 256,
                                 "tooltip": "Pixels per side of the base-colour and metallic-roughness textures "
                                            "(official demo 2048)."}),
        "target_faces": ("INT", {"default": _DEFAULT.target_faces, "min": 0, "max": 20_000_000, "step": 1000,
                                 "tooltip": "Faces after simplification (official demo 500 000); 0 disables. "
                                            "Ignored for meshes already unwrapped by UV Unwrap."}),
        "alpha_mode": (list(ALPHA_MODES), {"default": _DEFAULT.alpha_mode,
                                           "tooltip": "glTF alphaMode: OPAQUE (official) ignores the alpha channel, "
                                                      "MASK cuts at 0.5, BLEND blends."}),
        "double_sided": ("BOOLEAN", {"default": True,
                                     "tooltip": "Render both sides of every face (official: on without remesh). "
                                                "Export GLB turns it off when remesh is on."}),
        "texture_format": (list(TEXTURE_FORMATS), {"default": _DEFAULT.texture_format,
                                                   "tooltip": "png: lossless, opens everywhere. webp: much smaller, "
                                                              "needs viewers with EXT_texture_webp."}),
    }


def export_config(texture_size: int, target_faces: int, alpha_mode: str, double_sided: bool,
                  texture_format: str, remesh: bool = False) -> ExportConfig:
    """The export settings of the widgets; a remeshed mesh is a closed shell, so it is single-sided (§9.6)."""
    return ExportConfig(target_faces=int(target_faces), texture_size=int(texture_size), alpha_mode=alpha_mode,
                        double_sided=bool(double_sided) and not remesh, texture_format=texture_format,
                        remesh=bool(remesh))


def write_items(items: tuple[MeshAsset, ...], filename_prefix: str, cfg: ExportConfig
                ) -> tuple[list[dict[str, Any]], list[ExportReport]]:
    """Export every mesh of the batch; returns the ui entries (filename, subfolder, type, faces, vertices) and the
    library's reports."""
    if not items:
        raise InputError("no mesh to export")
    if any(item.pbr is None for item in items):
        raise InputError("this mesh has no PBR voxels to bake (Decode Mesh ran without a material latent, or it is a "
                         "ComfyUI MESH): connect Sample Material to Decode Mesh, or a VOXEL to Export GLB's voxel "
                         "input")
    out_dir = bridge.output_dir()
    progress = StageProgress(6 * len(items))
    entries, reports = [], []
    with comfy_errors("lower texture_size or target_faces (or decimate the mesh first)"):
        for item in items:
            target = next_output_path(out_dir, filename_prefix, "glb")
            report = export_glb(item.mesh, item.pbr, target.path, cfg, progress.grouped(f"export {target.name}"),
                                atlas=item.atlas, surface=item.surface if item.atlas is not None else None)
            reports.append(report)
            entries.append({"filename": target.name, "subfolder": target.subfolder, "type": "output",
                            "faces": report.faces, "vertices": report.vertices})
    return entries, reports


class Trellis2ExportGLB:
    """Bake the PBR textures and save a GLB in ComfyUI's output folder; the node shows a 3D preview."""

    DESCRIPTION = ("Cleans, simplifies, unwraps, bakes base colour/alpha + metallic/roughness and writes "
                   "output/<prefix>_00001_.glb, then previews it (orbit, lighting, channel views, download).")
    CATEGORY = CATEGORY
    FUNCTION = "export"
    OUTPUT_NODE = True
    RETURN_TYPES = (STRING, CORE_MESH, CORE_FILE_3D_GLB)
    RETURN_NAMES = ("glb_path", "core_mesh", "model_3d")
    OUTPUT_TOOLTIPS = (
        "Path of the (first) GLB relative to ComfyUI's output folder, e.g. for core Preview 3D.",
        "ComfyUI's MESH of what the GLBs hold (Y-up, UVs, normals, base-colour and metallic-roughness textures), "
        "e.g. for core's Save GLB or normal/AO bakes.",
        "The (first) GLB as ComfyUI's 3D file, e.g. for core's Preview 3D (Advanced) or Save 3D (Advanced).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh": (MESH_IN, {"tooltip": "Mesh + PBR voxels from Decode Mesh or the mesh nodes, or ComfyUI's MESH "
                                          "(then connect voxel)."}),
            "filename_prefix": filename_prefix_input(DEFAULT_PREFIX),
            **export_inputs(),
        }, "optional": {
            "remesh": ("BOOLEAN", {"default": False,
                                   "tooltip": "Rebuild the surface as a closed shell about 1 voxel outside it "
                                              "(narrow-band dual contouring, what the official demo does), then "
                                              "simplify; single-sided. Off keeps the decoded surface (double-sided). "
                                              "Slower on CPU; not with a mesh from UV Unwrap."}),
            "voxel": (CORE_VOXEL, {"tooltip": "PBR voxels for meshes that carry none (a ComfyUI MESH): Decode Mesh's "
                                              "voxel output or core's TRELLIS.2 texture decode. Ignored for meshes "
                                              "from Decode Mesh with a material."}),
        }}

    def export(self, mesh: Any, filename_prefix: str, texture_size: int, target_faces: int,
               alpha_mode: str, double_sided: bool, texture_format: str, remesh: bool = False,
               voxel: Any = None) -> dict[str, Any]:
        cfg = export_config(texture_size, target_faces, alpha_mode, double_sided, texture_format, remesh)
        items = with_voxels(mesh_assets(mesh, type(self)), voxel, type(self))
        entries, reports = write_items(items, filename_prefix, cfg)
        first = entries[0]
        path = f"{first['subfolder']}/{first['filename']}" if first["subfolder"] else first["filename"]
        return {"ui": {UI_KEY: entries}, "result": (path, textured_core_mesh([r.asset for r in reports]),
                                                    bridge.core_file_3d(reports[0].path))}


class Trellis2PreviewGLB:
    """Show a GLB in the pack's three.js viewer: a path in the output or input folder, or a ComfyUI 3D file."""

    DESCRIPTION = ("Previews a GLB: a path inside ComfyUI's output folder (e.g. from Export GLB or Image to 3D) or "
                   "input folder (e.g. core Load 3D's mesh_path), or a ComfyUI 3D file object (FILE_3D).")
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "glb_path": (STRING, {"default": "", "tooltip": "GLB path relative to ComfyUI's output folder (e.g. "
                                                            "trellis2/mesh_00001_.glb, Export GLB's output) or its "
                                                            "input folder (e.g. 3d/model.glb from core Load 3D; "
                                                            "'input/' in front picks the input folder). Ignored when "
                                                            "model_3d is connected."}),
        }, "optional": {
            "model_3d": (CORE_FILE_3D_ANY, {"tooltip": "A GLB as ComfyUI's 3D file object (core Load 3D, Mesh to "
                                                       "File3D, Export GLB's model_3d). Other formats are refused."}),
        }}

    def preview(self, glb_path: str, model_3d: Any = None) -> dict[str, Any]:
        if model_3d is not None:
            return {"ui": {UI_KEY: [_file_3d_entry(model_3d)]}, "result": ()}
        rel = str(glb_path).replace("\\", "/").strip()
        if not rel:
            raise InputError("Preview GLB: glb_path is empty; give a GLB path in the output or input folder, or "
                             "connect model_3d")
        roots = [("output", bridge.output_dir()), ("input", bridge.input_dir())]
        if rel.startswith("input/"):
            rel, roots = rel[len("input/"):], roots[1:]
        for kind, root in roots:
            entry = _entry_in(Path(root), rel, kind)
            if entry is not None:
                return {"ui": {UI_KEY: [entry]}, "result": ()}
        raise InputError(f"glb_path {glb_path!r}: no GLB file there inside the output folder {roots[0][1]}"
                         + (f" or the input folder {roots[-1][1]}" if len(roots) > 1 else "")
                         + "; paths outside these folders are refused")


def _entry_in(root: Path, rel: str, kind: str) -> dict[str, Any] | None:
    """The ui entry of ``rel`` inside ``root`` when it is a GLB there (never outside it), else None."""
    root = root.resolve()
    full = (root / rel).resolve()
    if os.path.commonpath([str(root), str(full)]) != str(root):
        return None
    if not full.is_file() or full.suffix.lower() != ".glb":
        return None
    sub = full.parent.relative_to(root).as_posix()
    return {"filename": full.name, "subfolder": "" if sub == "." else sub, "type": kind}


def _file_3d_entry(model_3d: Any) -> dict[str, Any]:
    """A core 3D file as a ui entry: shown where it lies (output/input folder), else its bytes are saved as a new
    GLB under the output folder."""
    fmt = str(getattr(model_3d, "format", "") or "").lower()
    if fmt != "glb":
        raise InputError(f"Preview GLB: model_3d is a {fmt or 'unknown'} file; this preview shows GLB files only")
    source = model_3d.get_source() if hasattr(model_3d, "get_source") else None
    if isinstance(source, str):
        for kind, root in (("output", bridge.output_dir()), ("input", bridge.input_dir())):
            root = Path(root).resolve()
            full = Path(source).resolve()
            if os.path.commonpath([str(root), str(full)]) == str(root):
                entry = _entry_in(root, full.relative_to(root).as_posix(), kind)
                if entry is not None:
                    return entry
    data = model_3d.get_bytes() if hasattr(model_3d, "get_bytes") else None
    if not isinstance(data, (bytes, bytearray)) or data[:4] != b"glTF":
        raise InputError("Preview GLB: model_3d holds no GLB data")
    target = next_output_path(bridge.output_dir(), "trellis2/preview", "glb")
    write_atomically(target.path, bytes(data))
    return {"filename": target.name, "subfolder": target.subfolder, "type": "output"}
