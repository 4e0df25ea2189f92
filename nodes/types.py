"""Socket types of the pack and the immutable objects that travel on them (style §2 ``nodes/types.py``).

ComfyUI caches every node output and hands the same object to every consumer, so these are frozen dataclasses
and no node ever changes one in place: a node that "modifies" a mesh returns a new :class:`MeshAsset`. Random
streams travel as generator *states* (tensors) from which each consumer builds its own generator, so re-running
a downstream node reproduces the same noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trellis2_core.mesh.types import Mesh, PbrVoxels
from trellis2_core.pipeline.stages import Conditioning, MaterialLatent, PipelineType, ShapeLatent, Structure

__all__ = [
    "PIPELINE", "COND", "STRUCTURE", "SHAPE", "MATERIAL", "MESH_ASSET", "CORE_MESH", "CORE_VOXEL", "CORE_FILE_3D_GLB",
    "CORE_FILE_3D_ANY", "MESH_IN", "IMAGE", "MASK", "STRING",
    "CATEGORY", "MESH_CATEGORY", "CondAsset", "StructureAsset", "ShapeAsset", "MaterialAsset", "MeshAsset",
    "generator_from",
]

# socket type strings (links connect only where these match exactly; never rename once shipped)
PIPELINE = "TRELLIS2_PIPELINE"
COND = "TRELLIS2_COND"
STRUCTURE = "TRELLIS2_STRUCTURE"
SHAPE = "TRELLIS2_SHAPE"
MATERIAL = "TRELLIS2_MATERIAL"
MESH_ASSET = "TRELLIS2_MESH"
CORE_MESH = "MESH"  # ComfyUI's own mesh type (core SaveGLB, mesh nodes)
CORE_VOXEL = "VOXEL"  # ComfyUI's voxel type (core TRELLIS.2 texture decode, Bake Texture From Voxel)
CORE_FILE_3D_GLB = "FILE_3D_GLB"  # ComfyUI's GLB file object (Preview 3D (Advanced), Save 3D (Advanced))
CORE_FILE_3D_ANY = "FILE_3D,FILE_3D_GLB"  # inputs taking any of core's 3D file objects
MESH_IN = f"{MESH_ASSET},{CORE_MESH}"  # mesh inputs: ours or core's
IMAGE = "IMAGE"
MASK = "MASK"
STRING = "STRING"

CATEGORY = "TRELLIS.2"
MESH_CATEGORY = "TRELLIS.2/mesh"


def generator_from(seed: int, state: Tensor | None) -> torch.Generator:
    """A fresh CPU generator: seeded with ``seed`` when it is non-zero, else continuing ``state`` (§1.5)."""
    gen = torch.Generator(device="cpu")
    if seed != 0 or state is None:
        gen.manual_seed(int(seed))
    else:
        gen.set_state(state.clone())
    return gen


@dataclass(frozen=True)
class CondAsset:
    """DINOv3 conditioning of one image batch (§3) and the preprocessed image it was computed from."""

    cond: Conditioning
    image: Any  # the preprocessed PIL image of batch item 0 (for previews)


@dataclass(frozen=True)
class StructureAsset:
    """Sparse-structure stage result, the seed it used and the random stream after its noise (§1.5)."""

    structure: Structure
    seed: int
    rng_state: Tensor  # torch.Generator state after the structure noise was drawn


@dataclass(frozen=True)
class ShapeAsset:
    """Shape stage result (denormalised shape SLat at ``shape.res``) and the random stream after it."""

    shape: ShapeLatent
    pipeline_type: PipelineType
    rng_state: Tensor


@dataclass(frozen=True)
class MaterialAsset:
    """Texture stage result: the material SLat on the shape SLat's voxels."""

    material: MaterialLatent
    shape: ShapeAsset


@dataclass(frozen=True)
class MeshAsset:
    """One decoded mesh (Z-up, inside [-0.5, 0.5]³) with its PBR voxels and, after UV unwrapping, its atlas.

    A ``TRELLIS2_MESH`` socket carries a tuple of these, one per image of the batch.
    """

    mesh: Mesh
    pbr: PbrVoxels | None  # None when decoded without a material latent (or from a core MESH)
    resolution: int
    atlas: Any = None  # trellis2_core.postprocess.UvAtlas once unwrapped (knows the texture size it was packed for)
    surface: Mesh | None = None  # the surface before simplification: export projects texels onto it (§9.5)

    @property
    def atlas_texture_size(self) -> int:
        """Texture size the atlas was packed for (0 before UV Unwrap)."""
        return int(self.atlas.texture_size) if self.atlas is not None else 0

    @property
    def summary(self) -> str:
        """'N faces, M vertices' for tooltips and logs."""
        return f"{self.mesh.num_faces} faces, {self.mesh.num_vertices} vertices"
