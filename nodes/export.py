"""Export GLB and Preview GLB nodes: textured GLB files under ComfyUI's output folder + the three.js preview (§9).

Files are written atomically by the library (temporary file + rename), so a cancelled or failed export never leaves
a half-written GLB. The UI output ``trellis2_glb`` lists the written files; ``web/trellis2_preview.js`` shows them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trellis2_core.errors import CancelledError, InputError
from trellis2_core.postprocess import ExportConfig, bake_pbr_textures, export_glb, vertex_normals, write_glb

from . import comfy_bridge as bridge
from .paths import DEFAULT_PREFIX, next_output_path
from .runtime import StageProgress, comfy_errors
from .types import CATEGORY, MESH_ASSET, STRING, MeshAsset

__all__ = ["Trellis2ExportGLB", "Trellis2PreviewGLB", "UI_KEY", "export_inputs", "export_config", "write_items"]

UI_KEY = "trellis2_glb"  # the ui-output key our web extension reads
ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")
TEXTURE_FORMATS = ("png", "webp")


def export_inputs() -> dict[str, tuple]:
    """GLB export widgets (shared with Image to 3D)."""
    return {
        "texture_size": ("INT", {"default": 2048, "min": 256, "max": 8192, "step": 256,
                                 "tooltip": "Pixels per side of the base-colour and metallic-roughness textures "
                                            "(official demo 2048)."}),
        "target_faces": ("INT", {"default": 500_000, "min": 0, "max": 20_000_000, "step": 1000,
                                 "tooltip": "Faces after simplification (official demo 500 000); 0 disables. "
                                            "Ignored for meshes already unwrapped by UV Unwrap."}),
        "alpha_mode": (list(ALPHA_MODES), {"default": "OPAQUE",
                                           "tooltip": "glTF alphaMode: OPAQUE (official) ignores the alpha channel, "
                                                      "MASK cuts at 0.5, BLEND blends."}),
        "double_sided": ("BOOLEAN", {"default": True,
                                     "tooltip": "Render both sides of every face (official: on without remesh). "
                                                "Export GLB turns it off when remesh is on."}),
        "texture_format": (list(TEXTURE_FORMATS), {"default": "png",
                                                   "tooltip": "png: lossless, opens everywhere. webp: much smaller, "
                                                              "needs viewers with EXT_texture_webp."}),
    }


def export_config(texture_size: int, target_faces: int, alpha_mode: str, double_sided: bool,
                  texture_format: str, remesh: bool = False) -> ExportConfig:
    """The export settings of the widgets; a remeshed mesh is a closed shell, so it is single-sided (§9.6)."""
    return ExportConfig(target_faces=int(target_faces), texture_size=int(texture_size), alpha_mode=alpha_mode,
                        double_sided=bool(double_sided) and not remesh, texture_format=texture_format,
                        remesh=bool(remesh))


def _write_unwrapped(item: MeshAsset, target: Path, cfg: ExportConfig, progress: Any) -> tuple[int, int]:
    """Bake into the atlas UV Unwrap made, then write (skips the export's own clean-up and unwrapping)."""
    atlas = item.atlas
    normals = vertex_normals(item.mesh)[atlas.vmap]
    textures = bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, item.pbr, cfg.texture_size)
    progress.step("bake", 1, 2)
    if progress.cancelled():
        raise CancelledError("GLB export cancelled before writing")
    write_glb(target, atlas.vertices, atlas.faces, normals, atlas.uvs, textures.base_color,
              textures.metallic_roughness, alpha_mode=cfg.alpha_mode, alpha_cutoff=cfg.alpha_cutoff,
              double_sided=cfg.material_double_sided, texture_format=cfg.texture_format,
              png_compress_level=cfg.png_compress_level)
    progress.step("write", 2, 2)
    return int(atlas.faces.shape[0]), int(atlas.vertices.shape[0])


def write_items(items: tuple[MeshAsset, ...], filename_prefix: str, cfg: ExportConfig) -> list[dict[str, Any]]:
    """Export every mesh of the batch; returns the ui entries (filename, subfolder, type, faces, vertices)."""
    if not items:
        raise InputError("no mesh to export")
    out_dir = bridge.output_dir()
    progress = StageProgress(6 * len(items))
    entries = []
    with comfy_errors("lower texture_size or target_faces (or decimate the mesh first)"):
        for item in items:
            if item.pbr is None:
                raise InputError("this mesh has no PBR voxels (Decode Mesh ran without a material latent); connect "
                                 "Sample Material to Decode Mesh to export a textured GLB")
            target = next_output_path(out_dir, filename_prefix, "glb")
            sub = progress.grouped(f"export {target.name}")
            if item.atlas is not None:
                if cfg.remesh:
                    raise InputError("remesh cannot change a mesh that UV Unwrap already unwrapped: turn remesh off "
                                     "or remove the UV Unwrap node")
                faces, vertices = _write_unwrapped(item, target.path, cfg, sub)
            else:
                report = export_glb(item.mesh, item.pbr, target.path, cfg, sub)
                faces, vertices = report.faces, report.vertices
            entries.append({"filename": target.name, "subfolder": target.subfolder, "type": "output",
                            "faces": faces, "vertices": vertices})
    return entries


class Trellis2ExportGLB:
    """Bake the PBR textures and save a GLB in ComfyUI's output folder; the node shows a 3D preview."""

    DESCRIPTION = ("Cleans, simplifies, unwraps, bakes base colour/alpha + metallic/roughness and writes "
                   "output/<prefix>_00001_.glb, then previews it (orbit, lighting, channel views, download).")
    CATEGORY = CATEGORY
    FUNCTION = "export"
    OUTPUT_NODE = True
    RETURN_TYPES = (STRING,)
    RETURN_NAMES = ("glb_path",)
    OUTPUT_TOOLTIPS = ("Path of the (first) GLB relative to ComfyUI's output folder, e.g. for core Preview 3D.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh": (MESH_ASSET, {"tooltip": "Mesh + PBR voxels from Decode Mesh or the mesh nodes."}),
            "filename_prefix": (STRING, {"default": DEFAULT_PREFIX,
                                         "tooltip": "File name under ComfyUI's output folder; '/' makes subfolders. "
                                                    "'..' and absolute paths are neutralised (files stay inside "
                                                    "output/); a counter _00001_ is appended."}),
            **export_inputs(),
        }, "optional": {
            "remesh": ("BOOLEAN", {"default": False,
                                   "tooltip": "Rebuild the surface as a closed shell about 1 voxel outside it "
                                              "(narrow-band dual contouring, what the official demo does), then "
                                              "simplify; single-sided. Off keeps the decoded surface (double-sided). "
                                              "Slower on CPU; not with a mesh from UV Unwrap."}),
        }}

    def export(self, mesh: tuple[MeshAsset, ...], filename_prefix: str, texture_size: int, target_faces: int,
               alpha_mode: str, double_sided: bool, texture_format: str, remesh: bool = False) -> dict[str, Any]:
        cfg = export_config(texture_size, target_faces, alpha_mode, double_sided, texture_format, remesh)
        entries = write_items(tuple(mesh), filename_prefix, cfg)
        first = entries[0]
        path = f"{first['subfolder']}/{first['filename']}" if first["subfolder"] else first["filename"]
        return {"ui": {UI_KEY: entries}, "result": (path,)}


class Trellis2PreviewGLB:
    """Show a GLB from the output folder in the pack's three.js viewer."""

    DESCRIPTION = "Previews a GLB that lies in ComfyUI's output folder (e.g. from Export GLB or Image to 3D)."
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "glb_path": (STRING, {"default": "", "tooltip": "GLB path relative to ComfyUI's output folder, e.g. "
                                                            "trellis2/mesh_00001_.glb (Export GLB's output)."}),
        }}

    def preview(self, glb_path: str) -> dict[str, Any]:
        rel = str(glb_path).replace("\\", "/").strip()
        root = bridge.output_dir().resolve()
        full = (root / rel).resolve()
        if not rel or os.path.commonpath([str(root), str(full)]) != str(root):
            raise InputError(f"glb_path {glb_path!r} must be a file inside the output folder {root}")
        if not full.is_file() or full.suffix.lower() != ".glb":
            raise InputError(f"no GLB file at {full}")
        sub = full.parent.relative_to(root).as_posix()
        entry = {"filename": full.name, "subfolder": "" if sub == "." else sub, "type": "output"}
        return {"ui": {UI_KEY: [entry]}, "result": ()}
