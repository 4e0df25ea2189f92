"""Mesh post-processing and GLB export (spec §8.2, §9): hole filling, clean-up, narrow-band remeshing, decimation,
UV unwrapping, closest-point projection, texture baking and glTF packing, without CuMesh, cubvh, o-voxel, nvdiffrast
or any compiled extension of our own."""
from __future__ import annotations

from .bake import BakedTextures, bake_pbr_textures, sample_pbr_voxels
from .clean import clean_mesh, remove_unreferenced_vertices, unify_orientation
from .closest import ClosestPoints, TriangleGrid, closest_points
from .decimate import DecimationJob, decimate_mesh, start_decimation
from .export import (
    ExportConfig, ExportReport, GeometryJob, export_glb, simplify_mesh, start_geometry, texture_mesh, vertex_normals,
)
from .glb import write_glb
from .holes import fill_holes
from .remesh import remesh_narrow_band
from .unwrap import UvAtlas, count_flipped, unwrap_uv

__all__ = [
    "BakedTextures",
    "ClosestPoints",
    "DecimationJob",
    "ExportConfig",
    "ExportReport",
    "GeometryJob",
    "TriangleGrid",
    "UvAtlas",
    "bake_pbr_textures",
    "clean_mesh",
    "closest_points",
    "count_flipped",
    "decimate_mesh",
    "export_glb",
    "fill_holes",
    "remesh_narrow_band",
    "remove_unreferenced_vertices",
    "sample_pbr_voxels",
    "simplify_mesh",
    "start_decimation",
    "start_geometry",
    "texture_mesh",
    "unify_orientation",
    "unwrap_uv",
    "vertex_normals",
    "write_glb",
]
