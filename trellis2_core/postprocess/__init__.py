"""Mesh post-processing and GLB export (spec §8.2, §9): hole filling, clean-up, decimation, UV unwrapping,
texture baking and glTF packing, without CuMesh, o-voxel, nvdiffrast or any compiled extension of our own."""
from __future__ import annotations

from .bake import BakedTextures, bake_pbr_textures, sample_pbr_voxels
from .clean import clean_mesh, remove_unreferenced_vertices, unify_orientation
from .decimate import decimate_mesh
from .export import ExportConfig, ExportReport, export_glb, vertex_normals
from .glb import write_glb
from .holes import fill_holes
from .unwrap import UvAtlas, count_flipped, unwrap_uv

__all__ = [
    "BakedTextures",
    "ExportConfig",
    "ExportReport",
    "UvAtlas",
    "bake_pbr_textures",
    "clean_mesh",
    "count_flipped",
    "decimate_mesh",
    "export_glb",
    "fill_holes",
    "remove_unreferenced_vertices",
    "sample_pbr_voxels",
    "unify_orientation",
    "unwrap_uv",
    "vertex_normals",
    "write_glb",
]
