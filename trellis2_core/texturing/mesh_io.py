"""The user's mesh for texturing: read from GLB/OBJ/PLY (or taken from a trimesh object or arrays) and checked.

:class:`InputMesh` holds exactly what the textured output must keep: the vertex array, the face array and the UVs
(trimesh's convention, ``v`` pointing up; ``None`` when the mesh has none). Everything else of the input
(materials, colours, normals) is replaced by the baked PBR material. Multi-object / multi-material inputs are
refused with the fix (one texture set is baked onto one mesh with one UV layout).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InputError

__all__ = ["InputMesh", "load_input_mesh", "input_mesh_from_gltf", "MESH_SUFFIXES", "MAX_FACES"]

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
MAX_FACES = 20_000_000  # beyond this the converter's crossing events alone take tens of GB


@dataclass(frozen=True)
class InputMesh:
    """A triangle mesh as given: ``vertices [V, 3]`` (float32/float64, input frame, Y-up), ``faces [F, 3]``
    int64 and ``uvs [V, 2]`` (trimesh convention, ``v`` up) or ``None``."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    name: str = "mesh"

    def same_geometry(self, other: "InputMesh") -> bool:
        """Whether ``other`` has exactly the same vertices, faces and UVs (names aside)."""
        if self is other:
            return True
        if (self.uvs is None) != (other.uvs is None):
            return False
        return np.array_equal(self.vertices, other.vertices) and np.array_equal(self.faces, other.faces) and \
            (self.uvs is None or np.array_equal(self.uvs, other.uvs))


def _trimesh() -> Any:
    try:
        import trimesh
    except ImportError as err:
        raise BackendError("reading meshes needs trimesh: pip install 'trimesh>=4.5'") from err
    return trimesh


def _from_trimesh(mesh: Any, name: str) -> InputMesh:
    trimesh = _trimesh()
    if isinstance(mesh, trimesh.Scene):
        geoms = [g for g in mesh.geometry.values() if isinstance(g, trimesh.Trimesh)]
        if len(geoms) != 1 or len(mesh.graph.nodes_geometry) != 1:
            raise InputError(f"{name}: the file holds {len(mesh.graph.nodes_geometry)} mesh objects/materials; "
                             "texture_mesh bakes one texture set onto one mesh: join them into one object with one "
                             "UV layout (e.g. Blender: select all, Join, one material) or texture them one by one")
        node = mesh.graph.nodes_geometry[0]
        transform, _ = mesh.graph[node]
        if not np.allclose(transform, np.eye(4)):
            raise InputError(f"{name}: the mesh object has a node transform (moved/rotated/scaled in its scene); "
                             "apply the transform to the vertices (Blender: Object > Apply > All Transforms) and "
                             "export again")
        mesh = geoms[0]
    if not isinstance(mesh, trimesh.Trimesh):
        raise InputError(f"{name}: not a triangle mesh ({type(mesh).__name__}); point clouds and paths cannot be "
                         "textured")
    uv = getattr(mesh.visual, "uv", None) if mesh.visual is not None else None
    uvs = None if uv is None or len(uv) != len(mesh.vertices) else np.asarray(uv)[:, :2]
    return InputMesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces, dtype=np.int64), uvs=uvs,
                     name=name)


def load_input_mesh(mesh: Any) -> InputMesh:
    """An :class:`InputMesh` from a path (GLB/glTF/OBJ/PLY), a ``trimesh.Trimesh``/``Scene``, an
    :class:`InputMesh`, or a ``(vertices, faces[, uvs])`` tuple; checks size and finiteness."""
    if isinstance(mesh, InputMesh):
        out = mesh
    elif isinstance(mesh, (str, os.PathLike)):
        path = Path(mesh)
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise InputError(f"mesh file {path.name!r}: unsupported type; use one of {', '.join(MESH_SUFFIXES)}")
        if not path.is_file():
            raise InputError(f"mesh file not found: {path}; check the path (--mesh / the mesh widget)")
        trimesh = _trimesh()
        try:
            loaded = trimesh.load(str(path), process=False, maintain_order=True)
        except (ValueError, KeyError, IndexError, OSError, TypeError) as err:
            raise InputError(f"mesh file {path.name!r} cannot be read ({type(err).__name__}: {err}); re-export it "
                             "as GLB, OBJ or PLY") from err
        out = _from_trimesh(loaded, path.name)
    elif isinstance(mesh, tuple) and len(mesh) in (2, 3):
        uvs = np.asarray(mesh[2]) if len(mesh) == 3 and mesh[2] is not None else None
        out = InputMesh(vertices=np.asarray(mesh[0]), faces=np.asarray(mesh[1]), uvs=uvs)
    else:
        out = _from_trimesh(mesh, "mesh")
    return _checked(out)


def input_mesh_from_gltf(vertices: Any, faces: Any, texcoords: Any = None, name: str = "mesh") -> InputMesh:
    """A checked :class:`InputMesh` from glTF-convention arrays (e.g. ComfyUI's core ``MESH``): ``vertices [V, 3]``
    (Y-up), ``faces [F, 3]``, ``texcoords [V, 2]`` with ``v`` pointing down (``TEXCOORD_0``), or None.

    The UVs become trimesh's ``v = 1 − TEXCOORD_0`` (computed in float64, exact for float32 input).
    """
    uvs = None
    if texcoords is not None:
        t = np.asarray(texcoords, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != 2:
            raise InputError(f"{name}: UVs must be [V, 2], got {list(t.shape)}")
        uvs = np.stack((t[:, 0], 1.0 - t[:, 1]), axis=1)
    return _checked(InputMesh(vertices=np.asarray(vertices), faces=np.asarray(faces), uvs=uvs, name=name))


def _checked(m: InputMesh) -> InputMesh:
    v, f = m.vertices, m.faces
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0 or not np.issubdtype(v.dtype, np.floating):
        raise InputError(f"{m.name}: vertices must be a non-empty float [V, 3] array, got {v.dtype} {list(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
        raise InputError(f"{m.name}: the mesh has no triangles (faces {list(f.shape)}); nothing to texture")
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"{m.name}: faces must hold integer vertex indices, got {f.dtype}")
    if f.shape[0] > MAX_FACES:
        raise InputError(f"{m.name}: {f.shape[0]:,} faces is more than texturing handles ({MAX_FACES:,}); decimate "
                         "the mesh first (e.g. Blender: Decimate modifier)")
    if int(f.min()) < 0 or int(f.max()) >= v.shape[0]:
        raise InputError(f"{m.name}: faces index vertices {int(f.min())}..{int(f.max())} but there are "
                         f"{v.shape[0]} vertices; the file is corrupt, re-export it")
    if not np.isfinite(v).all():
        raise InputError(f"{m.name}: vertex positions contain NaN or infinite values; clean the mesh and re-export")
    if m.uvs is not None:
        if m.uvs.shape != (v.shape[0], 2):
            raise InputError(f"{m.name}: uvs must be [V, 2] per vertex, got {list(m.uvs.shape)}")
        if not np.isfinite(m.uvs).all():
            raise InputError(f"{m.name}: the UVs contain NaN or infinite values; unwrap the mesh again or pass "
                             "unwrap='always'")
    return InputMesh(vertices=v, faces=f.astype(np.int64, copy=False), uvs=m.uvs, name=m.name)
