"""Texturing nodes (spec §11): Load Mesh → Encode Mesh → Sample Material (the existing node) → Bake onto Mesh.

Encode Mesh puts the mesh's shape latent on the ordinary ``TRELLIS2_SHAPE`` socket, so Sample Material samples its
texture latent exactly as for a generated shape; Bake onto Mesh decodes it onto the same mesh and writes
``output/<prefix>_00001_.glb`` with the input's vertices, faces and UVs (the library's ``decode_onto_mesh``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trellis2_core.errors import InputError, WeightsError
from trellis2_core.pipeline.stages import PipelineType, ShapeLatent
from trellis2_core.texturing.bake_mesh import UNWRAP_MODES
from trellis2_core.texturing.mesh_io import MESH_SUFFIXES, InputMesh, input_mesh_from_gltf, load_input_mesh
from trellis2_core.texturing.pipeline import TexturingPipeline
from trellis2_core.texturing.stages import EncodedMesh, decode_onto_mesh, encode_input_mesh, texturing_pipeline_for

from . import comfy_bridge as bridge
from .checks import check_widgets, require_asset, widget_label
from .export import TEXTURE_FORMATS, UI_KEY
from .paths import filename_prefix_input, next_output_path
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .sample import SEED_MAX
from .types import CORE_MESH, MATERIAL, CATEGORY, PIPELINE, SHAPE, STRING, MaterialAsset, ShapeAsset

__all__ = ["Trellis2LoadMesh", "Trellis2EncodeMesh", "Trellis2BakeOntoMesh", "SOURCE_MESH", "SourceMeshAsset",
           "EncodedShapeAsset", "list_meshes", "NO_FILE"]

SOURCE_MESH = "TRELLIS2_SOURCE_MESH"  # a user's mesh to texture (never rename once shipped)
NO_FILE = "none"
DEFAULT_TEXTURED_PREFIX = "trellis2/textured"
TEXTURING_CATEGORY = f"{CATEGORY}/texturing"


@dataclass(frozen=True)
class SourceMeshAsset:
    """A user's mesh as loaded (input frame, Y-up; vertices, faces and UVs exactly as in the file)."""

    mesh: InputMesh
    origin: str  # file name under input/, or 'core MESH'


@dataclass(frozen=True)
class EncodedShapeAsset(ShapeAsset):
    """A shape latent made by encoding a user mesh (not sampled): Sample Material takes it like any shape."""

    encoded: EncodedMesh


def list_meshes() -> list[str]:
    """``none`` and every GLB/glTF/OBJ/PLY under ComfyUI's input folder (relative POSIX paths, e.g. ``3d/x.glb``)."""
    root = bridge.input_dir()
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.suffix.lower() in MESH_SUFFIXES and p.is_file()) if root.is_dir() else []
    return [NO_FILE, *found]


def _input_file(name: str) -> Path:
    """The file ``name`` inside the input folder; absolute paths and '..' that leave it are refused."""
    label = widget_label(Trellis2LoadMesh, "mesh_file")
    rel = str(name).replace("\\", "/").strip()
    rel = rel[: -len(" [input]")] if rel.endswith(" [input]") else rel  # ComfyUI's annotated upload names
    root = bridge.input_dir().resolve()
    full = (root / rel).resolve()
    if not rel or rel == NO_FILE:
        raise InputError(f"{label}: choose a mesh file (upload a .glb/.obj/.ply into ComfyUI's input folder) or "
                         "connect a core MESH to 'core_mesh'")
    if os.path.commonpath([str(root), str(full)]) != str(root):
        raise InputError(f"{label}: {name!r} is outside ComfyUI's input folder {root}; put the file there")
    if full.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"{label}: {name!r} is not one of {', '.join(MESH_SUFFIXES)}")
    if not full.is_file():
        raise InputError(f"{label}: no file {rel!r} in ComfyUI's input folder {root}; upload it or pick another")
    return full


def _from_core_mesh(core: Any) -> InputMesh:
    """Batch item 0 of a core ``MESH`` (glTF frame and UV convention), cut to its real vertex/face counts."""
    vertices, faces, uvs = core.vertices, core.faces, getattr(core, "uvs", None)
    if getattr(vertices, "ndim", 2) == 3 or isinstance(vertices, (list, tuple)):
        if len(vertices) != 1:
            raise InputError(f"core MESH holds a batch of {len(vertices)} meshes; texture one mesh at a time "
                             "(split the batch first)")
        vertices, faces, uvs = vertices[0], faces[0], (uvs[0] if uvs is not None else None)
    counts = getattr(core, "vertex_counts", None), getattr(core, "face_counts", None)
    if counts[0] is not None and counts[1] is not None:
        nv, nf = int(counts[0][0]), int(counts[1][0])
        vertices, faces, uvs = vertices[:nv], faces[:nf], (uvs[:nv] if uvs is not None else None)
    cpu = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return input_mesh_from_gltf(cpu(vertices), cpu(faces), cpu(uvs) if uvs is not None else None, "core MESH")


class Trellis2LoadMesh:
    """Load the mesh to texture: a GLB/glTF/OBJ/PLY from ComfyUI's input folder, or a core MESH."""

    DESCRIPTION = ("Reads one mesh object (GLB/glTF/OBJ/PLY in ComfyUI's input folder, or a core MESH) to texture "
                   "with Encode Mesh → Sample Material → Bake onto Mesh. Its vertices, faces and UVs are kept.")
    CATEGORY = TEXTURING_CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (SOURCE_MESH,)
    RETURN_NAMES = ("mesh",)
    OUTPUT_TOOLTIPS = ("The mesh as given (its own frame and UVs): connect to Encode Mesh and Bake onto Mesh.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mesh_file": (list_meshes(), {
                "mesh_upload": True, "upload_subfolder": "3d",
                "tooltip": "A .glb/.gltf/.obj/.ply with ONE mesh object (join parts into one object with one UV "
                           "layout first) under ComfyUI's input folder; uploads go to input/3d. Its UVs are kept; "
                           "a mesh without UVs is unwrapped when baking."}),
        }, "optional": {
            "core_mesh": (CORE_MESH, {"tooltip": "Optional core MESH (e.g. from core mesh nodes); when connected it "
                                                 "is used instead of mesh_file (batch of one, its UVs kept)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, mesh_file: str = NO_FILE, **_: Any) -> str:
        """Re-run when the chosen file changes on disk (same name, new content)."""
        try:
            stat = _input_file(mesh_file).stat()
        except InputError:
            return str(mesh_file)
        return f"{mesh_file}:{stat.st_mtime_ns}:{stat.st_size}"

    def load(self, mesh_file: str, core_mesh: Any = None) -> tuple[SourceMeshAsset]:
        if core_mesh is not None:
            return (SourceMeshAsset(mesh=_from_core_mesh(core_mesh), origin="core MESH"),)
        path = _input_file(mesh_file)
        return (SourceMeshAsset(mesh=load_input_mesh(path), origin=str(mesh_file)),)


def _texturing(handle: PipelineHandle) -> TexturingPipeline:
    """The texturing models of the handle's pipeline folder (texturing_pipeline.json), kept with the handle."""
    def load() -> TexturingPipeline:
        try:
            return texturing_pipeline_for(handle.pipeline, source=handle.source, models_dir=bridge.models_dir())
        except WeightsError as err:
            raise WeightsError(f"{err} (Load TRELLIS.2 Model's source {handle.source!r} must hold the texturing "
                               "config texturing_pipeline.json as well; microsoft/TRELLIS.2-4B does)") from err
    return handle.extra_model("texturing_pipeline", load)


class Trellis2EncodeMesh:
    """Encode a mesh into the shape latent the texture model is conditioned on (its flexible dual grid)."""

    DESCRIPTION = ("Normalises the mesh, converts it to a flexible dual grid at 'resolution' and encodes it with "
                   "the shape encoder (§11). Connect the shape to Sample Material, then to Bake onto Mesh.")
    CATEGORY = TEXTURING_CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (SHAPE,)
    RETURN_NAMES = ("shape",)
    OUTPUT_TOOLTIPS = ("The mesh's shape latent and the texture noise stream: connect to Sample Material.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model (its folder must hold "
                                               "texturing_pipeline.json and the shape encoder, as TRELLIS.2-4B does)."}),
            "mesh": (SOURCE_MESH, {"tooltip": "From Load Mesh."}),
            "resolution": ("INT", {"default": 1024, "min": 64, "max": 2048, "step": 16,
                                   "tooltip": "Voxel grid the mesh is encoded at (official 512, 1024 or 1536). "
                                              "Higher = finer texture detail, more memory and time. 512 uses the "
                                              "512 texture model and 512 px image tokens, above 512 the 1024 ones."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Seed of the texture noise (official default 42). Sample Material's "
                                        "stage_seed 0 continues it (= the official texturing run)."}),
        }}

    def encode(self, pipeline: PipelineHandle, mesh: SourceMeshAsset, resolution: int, seed: int
               ) -> tuple[EncodedShapeAsset]:
        node = type(self)
        require_asset(pipeline, PipelineHandle, node, "pipeline", "Load TRELLIS.2 Model")
        require_asset(mesh, SourceMeshAsset, node, "mesh", "Load Mesh")
        check_widgets(node, {"resolution": resolution, "seed": seed})
        if int(resolution) % 16:
            raise InputError(f"{widget_label(node, 'resolution')} must be a multiple of 16, got {resolution}")
        progress = StageProgress(1)
        with comfy_errors("lower Encode Mesh's resolution (512) or set Load TRELLIS.2 Model's vram_preset to "
                          "'low'"), pipeline.models_for(("shape_slat_encoder",)):
            encoded = encode_input_mesh(_texturing(pipeline), mesh.mesh, int(resolution))
        progress.advance()
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))  # §11 step 3: the texture noise is the first draw after seeding
        # the type only selects the texture flow and DINOv3 size in Sample Material (512 up to 512, else 1024)
        ptype = PipelineType(f"texturing_{int(resolution)}", 64, encoded.flow_resolution, False)
        shape = ShapeLatent(slat=encoded.encoding.latent, res=int(resolution), runs={})
        return (EncodedShapeAsset(shape=shape, pipeline_type=ptype, rng_state=gen.get_state(), encoded=encoded),)


class Trellis2BakeOntoMesh:
    """Decode the material latent onto the encoded mesh and save it as a GLB with the mesh's own geometry and UVs."""

    DESCRIPTION = ("Decodes the material latent (from Sample Material on Encode Mesh's shape) into PBR voxels, "
                   "bakes base colour/alpha + metallic/roughness into the mesh's own UVs (unwraps only a mesh "
                   "without) and writes output/<prefix>_00001_.glb: same vertices, faces, UVs and placement.")
    CATEGORY = TEXTURING_CATEGORY
    FUNCTION = "bake"
    OUTPUT_NODE = True
    RETURN_TYPES = (STRING,)
    RETURN_NAMES = ("glb_path",)
    OUTPUT_TOOLTIPS = ("Path of the GLB relative to ComfyUI's output folder, e.g. for core Preview 3D.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model (the same one as Encode Mesh)."}),
            "material": (MATERIAL, {"tooltip": "From Sample Material, whose shape comes from Encode Mesh."}),
            "mesh": (SOURCE_MESH, {"tooltip": "From Load Mesh: the mesh Encode Mesh encoded (its geometry and UVs "
                                              "are written back unchanged)."}),
            "filename_prefix": filename_prefix_input(DEFAULT_TEXTURED_PREFIX),
            "texture_size": ("INT", {"default": 2048, "min": 256, "max": 8192, "step": 256,
                                     "tooltip": "Pixels per side of the base-colour and metallic-roughness textures "
                                                "(official 2048)."}),
            "unwrap": (list(UNWRAP_MODES), {"default": "auto",
                                            "tooltip": "auto: bake into the mesh's own UVs, unwrap only a mesh "
                                                       "without UVs. always: new UVs (vertices split on the seams, "
                                                       "positions kept). never: error if the mesh has no UVs."}),
            "texture_format": (list(TEXTURE_FORMATS), {"default": "png",
                                                       "tooltip": "png: lossless, opens everywhere. webp: much "
                                                                  "smaller, needs viewers with EXT_texture_webp."}),
            "double_sided": ("BOOLEAN", {"default": True,
                                         "tooltip": "Render both sides of every face (on suits open meshes and "
                                                    "flipped normals; off for closed, consistently wound meshes)."}),
        }}

    def bake(self, pipeline: PipelineHandle, material: MaterialAsset, mesh: SourceMeshAsset, filename_prefix: str,
             texture_size: int, unwrap: str, texture_format: str, double_sided: bool) -> dict[str, Any]:
        node = type(self)
        require_asset(pipeline, PipelineHandle, node, "pipeline", "Load TRELLIS.2 Model")
        require_asset(material, MaterialAsset, node, "material", "Sample Material")
        require_asset(mesh, SourceMeshAsset, node, "mesh", "Load Mesh")
        check_widgets(node, {"filename_prefix": filename_prefix, "texture_size": texture_size, "unwrap": unwrap,
                             "texture_format": texture_format, "double_sided": double_sided})
        shape = material.shape
        if not isinstance(shape, EncodedShapeAsset):
            raise InputError(f"{widget_label(node, 'material', 'input')}: its shape comes from Sample Shape, not "
                             "Encode Mesh; texture a generated shape with Decode Mesh → Export GLB instead")
        if not mesh.mesh.same_geometry(shape.encoded.source):
            raise InputError(f"{widget_label(node, 'mesh', 'input')}: this is not the mesh Encode Mesh encoded; "
                             "connect the same Load Mesh output to Encode Mesh and Bake onto Mesh")
        target = next_output_path(bridge.output_dir(), filename_prefix, "glb")
        progress = StageProgress(1)
        with comfy_errors("lower texture_size or Encode Mesh's resolution"), \
                pipeline.models_for(("tex_slat_decoder",)):
            report = decode_onto_mesh(_texturing(pipeline), shape.encoded, material.material, target.path,
                                      texture_size=int(texture_size), unwrap=unwrap, texture_format=texture_format,
                                      double_sided=bool(double_sided))
        progress.advance()
        entry = {"filename": target.name, "subfolder": target.subfolder, "type": "output", "faces": report.faces,
                 "vertices": report.vertices}
        return {"ui": {UI_KEY: [entry]}, "result": (target.relative,)}
